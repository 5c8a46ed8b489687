"""Training on the result, with no Spark: PyTorch datasets over a run's ``shards`` (or ``curated``) table.

``pip install 'lakecurate[torch]'``. The tables are read with delta-rs and pyarrow::

    from torch.utils.data import DataLoader
    from lakecurate.torch import ClusterBatches, to_tensors

    ds = ClusterBatches("s3://lake/curation/shards", run_id="curate-1a2b3c4d5e", mode="same_cluster",
                        batch_size=256, columns=["embedding"], transform=to_tensors)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=None, num_workers=4):
            ...

Modes: ``same_cluster`` (every batch one cluster: within-cluster, hard negatives, as in Divide and
Contrast), ``balanced`` (every batch evenly over the clusters), ``mixed`` (a uniform shuffle), and
``one_shard=i`` with any of them (one expert's data).
"""

from lakecurate.core.batching import MODES
from lakecurate.torch.loader import ClusterBatchSampler, ClusterBatches, distributed_slot, to_tensors
from lakecurate.torch.table import ShardTable

__all__ = ["MODES", "ClusterBatchSampler", "ClusterBatches", "ShardTable", "distributed_slot", "to_tensors"]
