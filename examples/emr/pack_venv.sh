#!/usr/bin/env bash
# Build the environment the EMR step ships to every node (--archives ...#environment).
# Run on Amazon Linux 2023 (the EMR image) or in its container, so the wheels match.
# EMR brings Spark: lakecurate is installed without the [spark] extra, pyspark only for venv-pack's
# own imports is not needed.
set -euo pipefail
BUCKET="${1:?usage: pack_venv.sh s3://bucket/prefix}"
python3 -m venv /tmp/lakecurate-venv
/tmp/lakecurate-venv/bin/pip install -q venv-pack "$(ls dist/lakecurate-*.whl)"
/tmp/lakecurate-venv/bin/venv-pack -p /tmp/lakecurate-venv -o /tmp/lakecurate-venv.tar.gz -f
aws s3 cp /tmp/lakecurate-venv.tar.gz "$BUCKET/lakecurate-venv.tar.gz"
# the job file and the config the step names (the job file is also inside the wheel: `lakecurate where curate`)
aws s3 cp lib/lakecurate/jobs/curate.py "$BUCKET/jobs/curate.py"
aws s3 cp lib/lakecurate/conf/curate.yaml "$BUCKET/conf/curate.yaml"
