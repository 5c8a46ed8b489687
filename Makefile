# Two entry points a newcomer needs; both create .venv on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-faults pin-demo bench clean-lake

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lakecurate run conf/demo.yaml

# The suite's JVMs (its sessions, the CLI jobs it starts and kills, the Connect server, spark-submit)
# live seconds to minutes while two pytest workers keep both cores busy: the C1 compiler alone and the
# serial collector spend a third less CPU on them (two kill/resume cases: 80% -> 59% of 2 cores), and
# spark-submit passes SPARK_SUBMIT_OPTS to every driver JVM.
TEST_JVM_OPTS := -XX:TieredStopAtLevel=1 -XX:+UseSerialGC

# two pytest workers, one test file each at a time (a file's module fixtures are built once); nothing
# in the suite times anything (speed and memory figures live in bench/, measured side by side)
test: $(STAMP)
	SPARK_SUBMIT_OPTS="$$SPARK_SUBMIT_OPTS $(TEST_JVM_OPTS)" $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not spark and not slow and not e2e"

test-faults: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m faults

pin-demo: $(STAMP)
	$(VENV)/bin/python scripts/pin_demo.py

clean-lake:
	rm -rf lake/
