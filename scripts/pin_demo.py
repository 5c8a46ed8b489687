"""Check the full demo configurations against the digests pinned in tests/e2e/pinned_demo.json.

    .venv/bin/python scripts/pin_demo.py            # conf/demo.yaml, conf/demo-redundant.yaml, and the latter at the Connect test's size (~2.5 min)
    .venv/bin/python scripts/pin_demo.py demo       # one of them

Runs each config through the real CLI into a fresh lake and compares the digests of its tables
(tests/digests.py: every cluster size and centroid bit, every assignment, every curated id) with
the pinned ones. Exit code 1 when any differs. The CI suite checks the small demo (tests/e2e/test_wheel.py, through spark-submit from the built wheel).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from deltalake import DeltaTable  # noqa: E402
from digests import run_digests  # noqa: E402
from test_spark_connect import DEMO as CONNECT_E2E  # noqa: E402

#: name -> (config, overrides); "-e2e" entries are the sizes the CI tests run (the Spark Connect
#: test compares its tables with "demo-redundant-e2e", which only this script runs classically)
CONFIGS = {"demo": ("conf/demo.yaml", []), "demo-redundant": ("conf/demo-redundant.yaml", []),
           "demo-redundant-e2e": ("conf/demo-redundant.yaml", [o for o in CONNECT_E2E if not o.startswith("spark.master")])}


def main(names: list[str]) -> int:
    with open(os.path.join(ROOT, "tests", "e2e", "pinned_demo.json")) as f:
        pinned = json.load(f)
    failed = 0
    for name in names or list(CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            lake = os.path.join(tmp, "lake")
            config, overrides = CONFIGS[name]
            cmd = [sys.executable, "-m", "lakecurate.cli", "run", os.path.join(ROOT, config), f"lake.root={lake}", *overrides]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            if out.returncode != 0:
                print(f"{name}: the run failed\n{out.stderr[-3000:]}")
                failed += 1
                continue
            run_id = DeltaTable(os.path.join(lake, "runs")).to_pandas()["run_id"].iloc[0]
            got = run_digests(lake, run_id)
        if "--pin" in sys.argv and name not in pinned:  # a new entry: record what this (classic) run gave
            pinned[name] = got
            with open(os.path.join(ROOT, "tests", "e2e", "pinned_demo.json"), "w") as f:
                json.dump(pinned, f, indent=1, sort_keys=True)
                f.write("\n")
        same = got == pinned[name]
        failed += not same
        print(f"{name}: {'same as pinned' if same else 'DIFFERENT'}")
        if not same:
            for key in sorted(set(got) | set(pinned[name])):
                if got.get(key) != pinned[name].get(key):
                    print(f"  {key}: got {got.get(key)}, pinned {pinned[name].get(key)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if not a.startswith("--")]))
