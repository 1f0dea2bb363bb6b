# The two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test run ingest lint-specs bench clean

$(INSTALLED): requirements.txt requirements-test.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt -c constraints.txt
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(PY) scripts/demo.py

# Any pipeline, once, on this machine: make run SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]
run ingest: $(INSTALLED)
	@test -n "$(SPEC)" -a -n "$(LANDING)" || { echo "usage: make $@ SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]" >&2; exit 2; }
	$(PY) scripts/local_run.py $@ --spec "$(SPEC)" --landing "$(LANDING)" $(if $(STORAGE),--storage "$(STORAGE)")

# TEST_WORKERS processes (pytest-xdist), each test file whole on one of them: 2 on the 2-core CI, 1.8x faster.
TEST_WORKERS ?= 2
test: $(INSTALLED)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

lint-specs: $(INSTALLED)
	$(PY) -m tasks validate-spec include/pipelines/*.yaml

clean:
	rm -rf .demo
