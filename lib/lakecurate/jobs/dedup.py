"""spark-submit entry point: ``spark-submit jobs/dedup.py conf/JOB.yaml [dotted.key=value ...]`` (dedup stage only)."""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["dedup", *sys.argv[1:]]))
