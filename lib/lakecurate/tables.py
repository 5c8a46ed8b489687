"""The names of lakecurate's tables and what each holds, in one place.

Every table lives under ``lake.root`` as a Delta table partitioned by ``run_id``; their columns are
documented in the README ("Tables"). Stages name the tables they write in their record
(:mod:`lakecurate.stages`) and read other stages' tables by these names only. The embed stage's
two tables take their names from the config (``embed.table``, ``embed.rejects_table``); these are
the defaults.
"""

from __future__ import annotations

POOL = "pool"
EMBEDDINGS = "embeddings"
REJECTS = "rejects"
DUPLICATES = "duplicates"
CORESET = "coreset"
CLUSTERS = "clusters"
COARSE_CLUSTERS = "coarse_clusters"
ASSIGNMENTS = "assignments"
CURATED = "curated"
SHARDS = "shards"
LABEL_COUNTS = "label_counts"
RUNS = "runs"

#: one line per table: the Delta table description written with its first commit
DESCRIPTIONS = {
    POOL: "generated long-tailed pool with known concepts",
    EMBEDDINGS: "embeddings keyed by (model, id); appended incrementally per run",
    REJECTS: "rows the embed stage could not embed, with the reason",
    DUPLICATES: "rows removed as near-duplicates and the row kept for each",
    CORESET: "the rows most like a target set (SimCore), with the centroid, similarity and round that chose each",
    CLUSTERS: "the cluster tree",
    COARSE_CLUSTERS: "the coarse clusters of each two-step level: a row goes to the nearest, then to the nearest of its clusters",
    ASSIGNMENTS: "level-1..T cluster of every input row",
    CURATED: "the curated subset",
    SHARDS: "the curated (or all assigned) rows with their payload, one Delta partition per cluster at the chosen level",
    LABEL_COUNTS: "rows per (known label, level-1 cluster) of the pool, a random subset, the de-duplicated pool and the curated subset",
    RUNS: "one row per stage attempt: config, status, timings, metrics",
}

#: partition columns after ``run_id`` (integer columns only): reading one value touches only its files
PARTITIONS = {
    SHARDS: ("shard",),
}

#: Parquet row groups of about this many bytes where a table is read in pieces at training time:
#: a loader reads a row group at a time from a few dozen files at once, so its memory and the
#: number of clusters mixed in its window both follow from it (Spark's default is 128 MiB)
ROW_GROUP_BYTES = {
    SHARDS: 4 * 1024 * 1024,
}

#: columns a later lakecurate added to a table, all nullable: a table an older version wrote gains
#: them (a Delta schema change, its own table version) on the first write that carries them; its
#: older rows read them as null
ADDED_COLUMNS = {
    CURATED: ("added_in", "dropped_in"),
}

#: columns only an older lakecurate wrote, per table: such a table is refused before any work,
#: with what to do (its rows stay readable by Spark, delta-rs and polars as they are)
OUTDATED_COLUMNS = {
    ASSIGNMENTS: ("cluster_1", "one cluster_<t> column per level"),
    CURATED: ("cluster_1", "one cluster_<t> column per level"),
}
