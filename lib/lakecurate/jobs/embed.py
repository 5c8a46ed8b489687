"""spark-submit entry point: ``spark-submit jobs/embed.py conf/JOB.yaml [dotted.key=value ...]``.

Runs only the embed stage of the config (new source rows -> the embeddings table); see
``lakecurate embed --help``.
"""

import sys

from lakecurate.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
