#!/usr/bin/env bash
# Alternative to the packed venv: an EMR bootstrap action that installs the wheel on every node
# into the system Python EMR's Spark uses (then no --archives / spark.pyspark.python in the step).
set -euo pipefail
aws s3 cp "${1:?usage: bootstrap.sh s3://bucket/prefix/lakecurate-<version>-py3-none-any.whl}" /tmp/
sudo python3 -m pip install -q /tmp/"$(basename "$1")"
