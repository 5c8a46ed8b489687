"""spark-submit entry point: ``spark-submit jobs/curate.py conf/JOB.yaml [dotted.key=value ...]``."""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
