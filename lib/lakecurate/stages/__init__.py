"""The stages of a run, in the order they run. Each reads tables and writes tables keyed by run_id.

One record per stage (:class:`~lakecurate.stages.context.Stage`), declared at the bottom of the
stage's module and listed here: the pipeline runs them in this order, the config's ``stages``
must keep it, the command line offers ``lakecurate <name>`` for those with a ``command``.
"""

from lakecurate.stages import assign, cluster, coreset, dedup, embed, report, sample, shards
from lakecurate.stages.context import Stage, StageContext

STAGES: tuple[Stage, ...] = (embed.STAGE, dedup.STAGE, coreset.STAGE, cluster.STAGE, assign.STAGE, sample.STAGE, shards.STAGE, report.STAGE)


def stage(name: str) -> Stage:
    """The record of the stage called ``name``."""
    for record in STAGES:
        if record.name == name:
            return record
    raise KeyError(name)


__all__ = ["STAGES", "Stage", "StageContext", "stage"]
