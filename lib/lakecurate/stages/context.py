"""What every stage receives: the session, the lake, the validated config and the run log."""

from __future__ import annotations

from dataclasses import dataclass

from lakecurate.config import RunConfig, SyntheticConfig
from lakecurate.lake import Lake
from lakecurate.runlog import RunLog

# table names, in one place
POOL = "pool"
DUPLICATES = "duplicates"
CLUSTERS = "clusters"
ASSIGNMENTS = "assignments"
CURATED = "curated"


def synthetic_pool_id(cfg: SyntheticConfig) -> str:
    """The ``pool`` table partition holding a generated pool with these parameters."""
    pool_id = f"synthetic-n{cfg.n}-d{cfg.dim}-c{cfg.n_concepts}-a{cfg.alpha:g}-s{cfg.spread:g}-seed{cfg.seed}"
    if cfg.n_items:  # a redundant pool (copies of n_items items)
        pool_id += f"-items{cfg.n_items}-ca{cfg.copies_alpha:g}-cn{cfg.copy_noise:g}"
    return pool_id


@dataclass
class StageContext:
    spark: object
    lake: Lake
    config: RunConfig
    runlog: RunLog

    @property
    def run_id(self) -> str:
        return self.config.run_id  # type: ignore[return-value]

    def input_frame(self, *, deduplicated: bool = True):
        """The run's input embeddings: after de-duplication when that stage is part of the run,
        unless ``deduplicated=False`` (the raw pool: dedup's own input, the report's baseline)."""
        cfg = self.config.input
        if "embed" in self.config.stages:
            # the embed stage ran first in this run: its embeddings table (rows of the configured
            # model) is the input, and input.path is not used
            from lakecurate.stages.embed import embedded_frame

            df = embedded_frame(self)
        elif cfg.format == "synthetic":
            df = self.lake.read(POOL, synthetic_pool_id(cfg.synthetic)).drop("run_id")
        else:
            df = self.lake.read_input(cfg)
        if deduplicated and "dedup" in self.config.stages and self.lake.exists(DUPLICATES):
            removed = self.lake.read(DUPLICATES, self.run_id).select(cfg.id_column)
            df = df.join(removed, on=cfg.id_column, how="left_anti")
        return df
