"""spark-submit entry point: ``spark-submit jobs/coreset.py conf/JOB.yaml [dotted.key=value ...]`` (coreset stage only)."""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["coreset", *sys.argv[1:]]))
