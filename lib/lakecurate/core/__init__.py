"""Pure numpy/faiss curation math. Nothing in this package imports Spark.

Modules:
  assign     - the assigner seam (nearest-centroid search + per-cluster sums) and its numpy/faiss implementation
  pruning    - the same assignment with per-row group bounds kept between passes (Yinyang-style): fewer products
  kmeans     - the one Lloyd loop, k-means++ on a sample, empty-cluster re-seeding
  hierarchy  - hierarchical k-means with resampling (Vo et al. 2024)
  sampling   - water-filling quotas and balanced hierarchical sampling
  coreset    - target-aware coresets (SimCore): exact greedy over candidate windows, never N x K
  keys       - counter-based random keys, identical on the driver and on executors
  metrics    - balance figures for a labelled subset (entropy, head share, coverage)
  synthetic  - generated long-tailed pools with known concepts
"""
