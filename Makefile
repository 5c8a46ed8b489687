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
# ... and each loads the same Spark, Parquet and Arrow classes: a class-data-sharing archive of them,
# written once by a small job (scripts/jvm_archive.py, about a minute), maps them ready-parsed
# (a cold 1,200-row job: 32-33 s -> 25-26 s). Where none could be written the suite runs without;
# JVM warnings go to stderr, never into the outputs tests read.
JVM_ARCHIVE := $(VENV)/spark-classes.jsa

$(JVM_ARCHIVE): $(STAMP) scripts/jvm_archive.py
	SPARK_SUBMIT_OPTS="$(TEST_JVM_OPTS)" $(VENV)/bin/python scripts/jvm_archive.py $@ || true

# two pytest workers, one test file each at a time (a file's module fixtures are built once); nothing
# in the suite times anything (speed and memory figures live in bench/, measured side by side)
test: $(STAMP) $(JVM_ARCHIVE)
	SPARK_SUBMIT_OPTS="$$SPARK_SUBMIT_OPTS $(TEST_JVM_OPTS) $$([ -f $(JVM_ARCHIVE) ] && echo -XX:SharedArchiveFile=$(abspath $(JVM_ARCHIVE)) -Xlog:disable -Xlog:all=warning:stderr)" \
	  $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not spark and not slow and not e2e"

test-faults: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m faults

pin-demo: $(STAMP)
	$(VENV)/bin/python scripts/pin_demo.py

clean-lake:
	rm -rf lake/
