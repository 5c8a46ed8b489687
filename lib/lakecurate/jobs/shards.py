"""spark-submit entry point: ``spark-submit jobs/shards.py conf/JOB.yaml [dotted.key=value ...]`` (``lakecurate shards``)."""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
