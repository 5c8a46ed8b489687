#!/usr/bin/env bash
# Creates .venv and installs lakecurate with everything the demo, the embed stage and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# --no-compile: Python compiles a module on its first import instead of all ~20k files up front
# (about a minute less on a fresh machine). torch first, pinned: this version's CPU wheel is on the machine's disk; an unpinned torch
# (asked for by sentence-transformers) would pull a multi-GB CUDA build.
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q --no-compile "torch==2.13.0"
.venv/bin/pip install -q --no-compile -e ".[spark,embed,dev]"
.venv/bin/python -c "import lakecurate, faiss, pyspark, grpc, deltalake, torch; print('lakecurate', lakecurate.__version__, 'ready')"
