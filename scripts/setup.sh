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
# .venv-sail: lakecurate with Sail and the Spark Connect client Sail accepts (pyproject's [sail]
# extra: it cannot share .venv, whose pyspark 4.3 is the same package); the suite's Delta tables
# written by a real Delta engine come from it (tests/sail_tables.py)
[ -x .venv-sail/bin/python ] || "$PY" -m venv .venv-sail
.venv-sail/bin/pip install -q --upgrade pip
.venv-sail/bin/pip install -q --no-compile -e ".[sail]"
# Debian's chromium, for the test that renders the HTML report as a person sees it
# (tests/e2e/test_report.py drives it with playwright's client, no browser download); where it
# cannot be installed (not root, no apt-get, no registry) that test is skipped with the reason
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
      || echo "setup: chromium could not be installed; the report's browser test will be skipped" >&2
  else
    echo "setup: no chromium and no root apt-get to install it; the report's browser test will be skipped" >&2
  fi
fi
.venv-sail/bin/python -c "import lakecurate, pysail, pyspark; print('sail', pysail.__version__ if hasattr(pysail, '__version__') else '', 'client', pyspark.__version__)"
.venv/bin/python -c "import lakecurate, faiss, pyspark, grpc, deltalake, torch; print('lakecurate', lakecurate.__version__, 'ready')"
