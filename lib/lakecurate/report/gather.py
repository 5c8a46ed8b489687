"""What a run's report shows, gathered from the lake as plain data: no Spark, bounded memory.

Every table is read through :meth:`lakecurate.lake.Lake.scan` (delta-rs reads the log, pyarrow the
files of the run's partition, a piece at a time, only the columns needed), so the report builds on
a laptop against a local folder or a cloud URI, and at the end of a run on its driver. What it
holds is O(clusters), never O(rows): per-cluster counts, a capped sample of level-1 centroids for
the map, a few example rows per cluster shown, the largest duplicate groups. Per-row work that
needs a join of big tables (rows per known label) was done in Spark by the ``report`` stage,
which wrote ``label_counts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lakecurate.core.metrics import covered, expected_group_counts, guidance_targets, size_summary
from lakecurate.core.sampling import hierarchical_quotas, tree_from_levels
from lakecurate.errors import TableError
from lakecurate.history import RunSummary, read_runs
from lakecurate.tables import ASSIGNMENTS, CLUSTERS, CURATED, DUPLICATES, LABEL_COUNTS, POOL

log = logging.getLogger(__name__)

#: level-1 centroids on the 2-D map at most (a uniform, deterministic subset of cluster ids above it)
MAP_MAX_CENTROIDS = 5000
#: how many clusters of each kind (largest, smallest, random) show example rows, and rows each
EXAMPLE_CLUSTERS = 3
EXAMPLE_ROWS = 6
#: duplicate groups shown with their rows, and removed rows each
DUPLICATE_GROUPS = 4
DUPLICATE_ROWS = 5
#: row counts a concept (or cluster) must reach to count as covered
THRESHOLDS = (10, 100, 1000)


@dataclass
class Level:
    level: int
    sizes: np.ndarray  # data points under each cluster, by cluster id
    parents: Optional[np.ndarray]  # its cluster at the next level (None at the top)

    @property
    def summary(self) -> dict:
        return size_summary(self.sizes)


@dataclass
class CentroidMap:
    cluster_ids: np.ndarray  # the level-1 clusters shown
    xy: np.ndarray  # their 2-D PCA coordinates
    explained: tuple[float, float]  # variance share of the two components
    of_total: int  # level-1 clusters in the tree


@dataclass
class Labels:
    column: str
    names: list[str]
    totals: dict[str, np.ndarray]  # subset -> rows per label (pool, random, deduplicated, curated)
    # the pool's assigned rows sparse by (level-1 cluster, label): for the guidance panel
    cluster: np.ndarray
    label: np.ndarray
    count: np.ndarray


@dataclass
class DuplicateGroup:
    kept: dict  # the kept row (id and payload)
    removed: list[dict]  # removed rows, most similar first, with "similarity"
    size: int  # rows removed for it


@dataclass
class Dedup:
    removed: int
    rows_in: Optional[int]
    group_sizes: np.ndarray  # rows removed per kept row
    groups: list[DuplicateGroup]


@dataclass
class ClusterExample:
    kind: str  # largest, smallest, random
    cluster_id: int
    size: int
    curated: Optional[int]
    top: Optional[int]  # its top-level cluster
    rows: list[dict]


@dataclass
class ReportData:
    run: RunSummary
    tree_run: Optional[str]
    id_column: str
    levels: list[Level] = field(default_factory=list)
    curated: Optional[np.ndarray] = None  # curated rows per level-1 cluster
    random: Optional[np.ndarray] = None  # a uniform random subset of the same size, per level-1 cluster
    centroid_map: Optional[CentroidMap] = None
    labels: Optional[Labels] = None
    dedup: Optional[Dedup] = None
    examples: list[ClusterExample] = field(default_factory=list)
    payload_source: Optional[str] = None
    guidance: list[dict] = field(default_factory=list)
    balance: dict = field(default_factory=dict)  # the report stage's figures (known labels)

    @property
    def stage_metrics(self) -> dict:
        return {s.stage: s.metrics for s in self.run.stages}

    @property
    def top_of_level1(self) -> Optional[np.ndarray]:
        """Each level-1 cluster's top-level cluster."""
        if not self.levels:
            return None
        top = np.arange(self.levels[0].sizes.size)
        for lv in self.levels[:-1]:
            top = lv.parents[top]
        return top

    def per_top(self, per_level1: np.ndarray) -> np.ndarray:
        """Rows per top-level cluster, from rows per level-1 cluster."""
        return np.bincount(self.top_of_level1, weights=per_level1, minlength=self.levels[-1].sizes.size)


def gather(lake, run_id: str, *, seed: int = 0) -> ReportData:
    """Everything the report of ``run_id`` shows, from the lake's tables."""
    runs = read_runs(lake)
    run = next((r for r in runs if r.run_id == run_id), None)
    if run is None:
        raise TableError(f"run {run_id!r} is not in the runs table of {lake.root!r} (latest: {', '.join(r.run_id for r in runs[:5])})")
    metrics = {s.stage: s.metrics for s in run.stages if s.status == "succeeded"}
    cfg = run.config
    id_col = cfg.get("input", {}).get("id_column", "id")
    if "embed" in metrics:
        id_col = cfg.get("embed", {}).get("source", {}).get("id_column", id_col)
    tree_run = _tree_run(run_id, metrics)
    data = ReportData(run=run, tree_run=tree_run, id_column=id_col, balance=metrics.get("report", {}))
    rng = np.random.default_rng(seed)
    if tree_run is not None and lake.exists(CLUSTERS):
        data.levels = _levels(lake, tree_run)
    if data.levels:
        log.info("report %s: tree %s with %s clusters per level", run_id, tree_run, [lv.sizes.size for lv in data.levels])
        data.centroid_map = _centroid_map(lake, tree_run, data.levels[0].sizes.size)
        if "sample" in metrics and lake.exists(CURATED):
            data.curated = _per_cluster(lake, CURATED, run_id, data.levels[0].sizes.size)
            n = int(data.curated.sum())
            pool = data.levels[0].sizes
            if n <= pool.sum():  # a uniform random subset of the same size, drawn from the pool's counts
                data.random = rng.multivariate_hypergeometric(pool, n, method="marginals")
    if "report" in metrics and lake.exists(LABEL_COUNTS):
        data.labels = _labels(lake, run_id, metrics["report"].get("label_column", "label"))
    dedup_run = _output_run(run_id, metrics, "dedup")
    payload = PayloadSource(lake, cfg, id_col)
    data.payload_source = payload.where
    if dedup_run is not None and lake.exists(DUPLICATES):
        data.dedup = _dedup(lake, dedup_run, id_col, metrics["dedup"], payload)
    if data.levels:
        data.examples = _examples(lake, data, run_id, payload, rng)
        target = (metrics.get("sample") or {}).get("target_size")
        if target:  # the sampler's own seed: at the run's target the quotas are the run's
            data.guidance = guidance(data, int(target), int(cfg.get("sampling", {}).get("seed", 0)))
    return data


# ---------------------------------------------------------------- where the run's rows are

def _output_run(run_id: str, metrics: dict, stage: str) -> Optional[str]:
    if stage not in metrics:
        return None
    return metrics[stage].get("reused_from", run_id)


def _tree_run(run_id: str, metrics: dict) -> Optional[str]:
    for stage in ("sample", "assign", "shards"):
        if metrics.get(stage, {}).get("tree_run_id"):
            return metrics[stage]["tree_run_id"]
    return _output_run(run_id, metrics, "cluster")


def _levels(lake, tree_run: str) -> list[Level]:
    columns = ["level", "cluster_id", "parent_id", "size"]
    pieces = list(lake.scan(CLUSTERS, tree_run, columns))  # through the engine on native lakes
    t = pa.concat_tables(pieces) if pieces else pa.table({c: pa.array([], pa.int64()) for c in columns})
    levels = []
    for level in sorted(set(t.column("level").to_pylist())):
        rows = t.filter(pc.equal(t.column("level"), level))
        ids = rows.column("cluster_id").to_numpy()
        order = np.argsort(ids)
        if not np.array_equal(ids[order], np.arange(ids.size)):
            raise TableError(f"table {CLUSTERS!r} of run {tree_run!r}: level {level}'s cluster ids are not 0..{ids.size - 1}")
        sizes = rows.column("size").to_numpy(zero_copy_only=False).astype(np.int64)[order]
        par = rows.column("parent_id")
        parents = None if par.null_count == len(par) else par.to_numpy(zero_copy_only=False).astype(np.int64)[order]
        levels.append(Level(int(level), sizes, parents))
    return levels


def _centroid_map(lake, tree_run: str, k1: int) -> Optional[CentroidMap]:
    stride = -(-k1 // MAP_MAX_CENTROIDS)
    ids, rows = [], []
    for piece in lake.scan(CLUSTERS, tree_run, ["level", "cluster_id", "centroid"], batch_rows=8192):
        cid = piece.column("cluster_id").to_numpy(zero_copy_only=False)
        keep = pa.array((piece.column("level").to_numpy(zero_copy_only=False) == 1) & (cid % stride == 0))
        piece = piece.filter(keep)
        if piece.num_rows == 0:
            continue
        ids.append(piece.column("cluster_id").to_numpy())
        flat = pc.list_flatten(piece.column("centroid")).to_numpy(zero_copy_only=False).astype(np.float64)
        rows.append(flat.reshape(piece.num_rows, -1))
    if not ids or sum(len(i) for i in ids) < 3:
        return None
    ids = np.concatenate(ids)
    X = np.concatenate(rows)
    order = np.argsort(ids)
    ids, X = ids[order], X[order]
    X = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    if vt.shape[0] < 2:  # one dimension: no plane to draw on
        return None
    var = s**2
    explained = (float(var[0] / var.sum()), float(var[1] / var.sum())) if var.sum() > 0 else (0.0, 0.0)
    return CentroidMap(ids, X @ vt[:2].T, explained, k1)


def _per_cluster(lake, table: str, run_id: str, k1: int) -> np.ndarray:
    counts = np.zeros(k1, dtype=np.int64)
    for piece in lake.scan(table, run_id, ["cluster"], batch_rows=1 << 20):
        counts += np.bincount(piece.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64), minlength=k1)[:k1]
    return counts


def _labels(lake, run_id: str, column: str) -> Optional[Labels]:
    names: dict[str, int] = {}
    totals: dict[str, list] = {}
    sparse = {"cluster": [], "label": [], "count": []}
    subsets = ["pool", "random", "deduplicated", "curated"]
    for piece in lake.scan(LABEL_COUNTS, run_id, ["label", "cluster", *subsets]):
        labels = piece.column("label").to_pylist()
        idx = np.array([names.setdefault("(null)" if v is None else v, len(names)) for v in labels], dtype=np.int64)
        for s in subsets:
            col = piece.column(s)
            if col.null_count == len(col):
                continue
            totals.setdefault(s, []).append((idx, col.fill_null(0).to_numpy().astype(np.int64)))
        cl = piece.column("cluster")
        assigned = np.asarray(cl.is_valid())
        sparse["cluster"].append(cl.fill_null(0).to_numpy()[assigned].astype(np.int64))
        sparse["label"].append(idx[assigned])
        sparse["count"].append(piece.column("pool").to_numpy().astype(np.int64)[assigned])
    if not names:
        return None
    n = len(names)
    out = {s: np.bincount(np.concatenate([i for i, _ in parts]), weights=np.concatenate([c for _, c in parts]), minlength=n).astype(np.int64)
           for s, parts in totals.items()}
    return Labels(column, list(names), out, *(np.concatenate(v) for v in sparse.values()))


# ---------------------------------------------------------------- rows a person reads

class PayloadSource:
    """Where a run's rows have their payload (text, image bytes or paths) and how to fetch a few by id.

    The embed stage's source (its text or image column; for image files, the id is the path), else
    the input table's columns other than the id and the embedding (the generated pool: its concept).
    """

    def __init__(self, lake, cfg: dict, id_col: str):
        self.lake, self.id_col = lake, id_col
        self.columns: list[str] = []
        self.where: Optional[str] = None
        self._path = self._format = None
        self._partition = None
        embed, inp = cfg.get("embed"), cfg.get("input", {})
        stages = cfg.get("stages") or []
        if embed and "embed" in stages:
            src = embed.get("source", {})
            self._format, self._path = src.get("format"), src.get("path")
            if self._format == "files":
                self.columns, self.where = [id_col], f"image files under {self._path}"
                self._path = None  # the id is the file's path: nothing to look up
                return
            col = src.get("image_column") if (embed.get("encoder", {}).get("kind") == "image") else src.get("text_column")
            self.columns = [c for c in [col, *src.get("passthrough_columns", ())] if c]
        elif inp.get("format") == "synthetic":
            self._format, self._path = "delta", lake.path(POOL)
            from lakecurate.config import SyntheticConfig, from_dict
            from lakecurate.inputs import synthetic_pool_id

            self._partition = {"run_id": synthetic_pool_id(from_dict(SyntheticConfig, inp.get("synthetic") or {}))}
        elif inp.get("format") in ("delta", "parquet") and inp.get("path"):
            self._format, self._path = inp["format"], inp["path"]
        if self._path is None:
            return
        try:
            schema = self._schema()
        except Exception as exc:  # an input moved or unreadable from here: the report shows ids only
            log.warning("report: the payload of %s cannot be read (%s): example rows show their ids only", self._path, exc)
            self._path = None
            return
        if not self.columns:
            skip = {id_col, inp.get("embedding_column", "embedding"), "run_id"}
            self.columns = [f.name for f in schema if f.name not in skip and not pa.types.is_list(f.type)
                            and not pa.types.is_large_list(f.type) and not pa.types.is_fixed_size_list(f.type)]
        self.columns = [c for c in self.columns if c in schema.names]
        self.where = self._path

    def _schema(self) -> pa.Schema:
        if self._format == "delta":
            return self.lake.delta_schema(self._path)
        return self._dataset().schema

    def _dataset(self):
        import pyarrow.dataset as ds

        from lakecurate.lake import filesystem

        fs, path = filesystem(self._path, self.lake.options)
        return ds.dataset(path, filesystem=fs, format="parquet")

    def fetch(self, ids: list) -> dict:
        """id -> {column: value} for the ids found (one pass over the source, stopping once all are found)."""
        if not ids or self._path is None or not self.columns:
            return {i: {} for i in ids} if self.columns == [self.id_col] else {}
        want = pa.array(ids)
        found: dict = {}
        cols = [self.id_col, *[c for c in self.columns if c != self.id_col]]
        if self._format == "delta":  # through the engine on native lakes
            pieces = self.lake.delta_rows_with_ids(self._path, cols, self.id_col, ids, self._partition)
        else:
            import pyarrow.dataset as ds

            pieces = (pa.Table.from_batches([b]) for b in self._dataset().to_batches(columns=cols, filter=ds.field(self.id_col).isin(want)))
        for piece in pieces:
            hit = piece.filter(pc.is_in(piece.column(self.id_col), value_set=want.cast(piece.schema.field(self.id_col).type)))
            for row in hit.to_pylist():
                found[row.pop(self.id_col)] = row
            if len(found) >= len(ids):
                break
        return found


def _rows_of_clusters(lake, table: str, run_id: str, id_col: str, clusters: set, per: int) -> dict[int, list]:
    """Up to ``per`` rows of each of ``clusters`` (by id, in the table's order: the first ones met)."""
    out: dict[int, list] = {c: [] for c in clusters}
    value_set = pa.array(sorted(clusters), pa.int32())
    for piece in lake.scan(table, run_id, [id_col, "cluster"], batch_rows=1 << 18):
        hit = piece.filter(pc.is_in(piece.column("cluster").cast(pa.int32()), value_set=value_set))
        for row in hit.to_pylist():
            if len(out[row["cluster"]]) < per:
                out[row["cluster"]].append(row[id_col])
        if all(len(v) >= per for v in out.values()):
            break
    return out


def _examples(lake, data: ReportData, run_id: str, payload: PayloadSource, rng) -> list[ClusterExample]:
    sizes = data.levels[0].sizes
    nonempty = np.flatnonzero(sizes > 0)
    by_size = nonempty[np.argsort(-sizes[nonempty], kind="stable")]
    chosen = [("largest", int(c)) for c in by_size[:EXAMPLE_CLUSTERS]]
    chosen += [("smallest", int(c)) for c in by_size[::-1][:EXAMPLE_CLUSTERS] if int(c) not in {c for _, c in chosen}]
    rest = np.setdiff1d(nonempty, [c for _, c in chosen])
    chosen += [("random", int(c)) for c in np.sort(rng.choice(rest, size=min(EXAMPLE_CLUSTERS, rest.size), replace=False))]
    # rows of the curated subset where there is one (what the model will see), else of the tree
    table, part = (CURATED, run_id) if data.curated is not None else (ASSIGNMENTS, data.tree_run)
    members = _rows_of_clusters(lake, table, part, data.id_column, {c for _, c in chosen}, EXAMPLE_ROWS)
    ids = [i for rows in members.values() for i in rows]
    found = payload.fetch(ids)
    top = data.top_of_level1
    return [ClusterExample(kind, c, int(sizes[c]), None if data.curated is None else int(data.curated[c]),
                           None if top is None else int(top[c]),
                           [{data.id_column: i, **found.get(i, {})} for i in members[c]]) for kind, c in chosen]


def _dedup(lake, dedup_run: str, id_col: str, metrics: dict, payload: PayloadSource) -> Dedup:
    rows_in = metrics.get("n_rows") or metrics.get("new_rows")
    kept_ids = [piece.column("kept_id") for piece in lake.scan(DUPLICATES, dedup_run, ["kept_id"], batch_rows=1 << 20)]
    if not kept_ids:
        return Dedup(0, rows_in, np.zeros(0, np.int64), [])
    counts = pc.value_counts(pa.chunked_array([c for k in kept_ids for c in k.chunks]))
    keys, sizes = counts.field("values"), counts.field("counts").to_numpy()
    order = np.argsort(-sizes, kind="stable")[:DUPLICATE_GROUPS]
    top = [keys[int(i)].as_py() for i in order]
    members: dict = {k: [] for k in top}
    for piece in lake.scan(DUPLICATES, dedup_run, [id_col, "kept_id", "similarity"], batch_rows=1 << 18):
        hit = piece.filter(pc.is_in(piece.column("kept_id"), value_set=pa.array(top, piece.schema.field("kept_id").type)))
        for row in hit.to_pylist():
            members[row["kept_id"]].append((row["similarity"], row[id_col]))
    shown = {k: sorted(v, key=lambda s: (-s[0], str(s[1])))[:DUPLICATE_ROWS] for k, v in members.items()}
    found = payload.fetch(top + [i for v in shown.values() for _, i in v])
    groups = [DuplicateGroup({id_col: k, **found.get(k, {})}, [{id_col: i, "similarity": s, **found.get(i, {})} for s, i in shown[k]],
                             int(sizes[j])) for k, j in zip(top, order)]
    return Dedup(int(sizes.sum()), rows_in, sizes.astype(np.int64), groups)


# ---------------------------------------------------------------- the small-subset guidance

def guidance(data: ReportData, target: int, seed: int) -> list[dict]:
    """For subset sizes from the target down to a few thousand: what each still covers.

    Quotas come from the run's own tree by the sampler's own water-filling
    (:func:`~lakecurate.core.sampling.hierarchical_quotas`), so they are what a rerun with that
    ``sampling.target_size`` would draw per cluster. Per known label, a cluster's quota is spread
    over its labels in the pool's proportions (an expectation); a random subset's is the pool's
    share times the size.
    """
    tree = tree_from_levels([lv.sizes for lv in data.levels], [lv.parents for lv in data.levels])
    pool = tree.n_points
    rows = []
    for size in guidance_targets(target):
        if size >= pool:
            continue
        quotas = hierarchical_quotas(tree, size, np.random.default_rng(seed))
        row = {"target_size": size, "level1": covered(quotas, THRESHOLDS),
               "top": covered(data.per_top(quotas), THRESHOLDS)}
        if data.labels is not None:
            lab = data.labels
            n = len(lab.names)
            curated = expected_group_counts(quotas, lab.cluster, lab.label, lab.count, n)
            pool_counts = np.bincount(lab.label, weights=lab.count, minlength=n)
            row["concepts"] = covered(curated, THRESHOLDS)
            row["concepts_random"] = covered(pool_counts * (size / pool_counts.sum()), THRESHOLDS)
        rows.append(row)
    return rows
