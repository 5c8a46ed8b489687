"""spark-submit entry point: ``spark-submit jobs/assign.py conf/JOB.yaml [dotted.key=value ...]`` (``lakecurate assign``)."""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["assign", *sys.argv[1:]]))
