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

# two pytest workers, one test file each at a time (a file's module fixtures are built once)
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not spark and not slow and not e2e"

test-faults: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m faults

pin-demo: $(STAMP)
	$(VENV)/bin/python scripts/pin_demo.py

clean-lake:
	rm -rf lake/
