# The two commands: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test test-fast test-compat run ingest lint-specs bench clean

# The pinned requirements, then the project itself, editable (pyproject.toml): `tasks` imports from anywhere.
# uv installs them (pinned, with pip's own index and find-links settings: scripts/uv_install.py; 87 s where pip
# took 144 s, docs/architecture.md "Test time"); pip does where uv cannot.
REQS := -r requirements.txt -r requirements-test.txt -c constraints.txt
$(INSTALLED): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) scripts/uv_install.py $(REQS) || $(PY) -m pip install -q $(REQS)
	$(PY) -m pip install -q -e . --no-deps
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(PY) scripts/demo.py

# Any pipeline, once, on this machine: make run SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]
run ingest: $(INSTALLED)
	@test -n "$(SPEC)" -a -n "$(LANDING)" || { echo "usage: make $@ SPEC=include/pipelines/NAME.yaml LANDING=DIR [STORAGE=DIR]" >&2; exit 2; }
	$(PY) scripts/local_run.py $@ --spec "$(SPEC)" --landing "$(LANDING)" $(if $(STORAGE),--storage "$(STORAGE)")

# TEST_WORKERS processes (pytest-xdist), each test file whole on one of them: 2 on the 2-core CI, 1.8x faster.
# Files are handed out in tests/conftest.py's order (the longest first), not xdist's (the most tests first).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(INSTALLED)
	$(PY) -m pytest $(XDIST) tests

# The fast tier: the unit tests, none marked integration, e2e or slow (tests/conftest.py); <= 60 s on 2 cores.
test-fast: $(INSTALLED)
	$(PY) -m pytest $(XDIST) -m "not integration and not e2e and not slow" tests

# The training tests on the GPU image's transformers (5.17; requirements.txt pins 5.23), in .venv-compat: a
# behaviour that moved between the two releases (gradient accumulation's loss scaling did) fails here.
COMPAT_TRANSFORMERS ?= 5.17.0
COMPAT_TESTS ?= tests/test_train_runner.py tests/test_distill.py tests/test_finetune_resume.py \
	tests/test_teacher_cache.py tests/test_ddp.py tests/test_teacher_cache_ddp.py tests/test_gpu_efficiency_bench.py
test-compat:
	test -x .venv-compat/bin/python || $(PYTHON) -m venv .venv-compat
	sed 's/^transformers==.*/transformers==$(COMPAT_TRANSFORMERS)/' requirements.txt > .venv-compat/requirements.txt
	grep -viE '^(transformers|tokenizers|huggingface[-_]hub)==' constraints.txt > .venv-compat/constraints.txt
	.venv-compat/bin/python -m pip install -q -r .venv-compat/requirements.txt -r requirements-test.txt \
	  -c .venv-compat/constraints.txt
	.venv-compat/bin/python -m pip install -q -e . --no-deps
	.venv-compat/bin/python -c 'import transformers; print("transformers", transformers.__version__)'
	.venv-compat/bin/python -m pytest $(XDIST) $(COMPAT_TESTS)

lint-specs: $(INSTALLED)
	$(PY) -m tasks validate-spec include/pipelines/*.yaml

clean:
	rm -rf .demo

# The docker-compose stack built from nothing but Debian and PyPI, started and driven end to end through its REST
# API and S3 endpoint, then torn down (scripts/stack_test.py; docs/operations.md, "The stack test"). Needs root
# (or a running Docker engine), ~15 GB of disk; not part of `make test`. STACK_TEST_ARGS=--cold for a cold run.
.PHONY: stack-test
stack-test: $(INSTALLED)
	$(PY) scripts/stack_test.py $(STACK_TEST_ARGS)

# The same, then the fault cases on the same stack: the scheduler killed mid-fine-tune, Postgres restarted mid-run,
# S3 gone during publish (scripts/stack_faults.py).
.PHONY: stack-faults
stack-faults: $(INSTALLED)
	$(PY) scripts/stack_test.py --faults $(STACK_TEST_ARGS)
