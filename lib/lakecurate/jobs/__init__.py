"""``spark-submit`` entry files, one per command: ``spark-submit <this folder>/curate.py JOB.yaml [k=v ...]``.

They ship inside the wheel (``lakecurate where jobs`` prints this folder) and, in the repository,
as ``jobs/``. Each is the command line's ``main`` with its command fixed.
"""
