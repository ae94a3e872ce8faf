# detcompress: install, demo, tests.
# VENV chooses the virtual environment (default .venv in the repository root).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PIP) install --disable-pip-version-check -c $(CONSTRAINTS)
STAMP := $(VENV)/.detcompress-installed
DEMO_DIR ?= demo_ws

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# The stamp makes a second `make install` a no-op unless the pins or the project changed.
# Order matters: torch (CPU build) first; mmcv is compiled against it with
# --no-build-isolation, so its build tools and mmengine must already be there. A prebuilt
# mmcv wheel is taken when PIP_FIND_LINKS offers one (see .ci/run).
$(STAMP): $(CONSTRAINTS) pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP_INSTALL) torch
	$(PIP_INSTALL) setuptools wheel ninja
	$(PIP_INSTALL) mmengine
	MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=2 $(PIP_INSTALL) --no-build-isolation mmcv
	$(PIP_INSTALL) -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

# The demo, end to end through the CLI: a synthetic workspace (made once), FP32 baseline, int8
# QAT, export, eval and bench of all; writes $(DEMO_DIR)/report.md and report.png.
demo: install
	$(PY) -m detcompress.demo.pipeline $(DEMO_DIR)

# Two pytest-xdist workers (tests/conftest.py keeps a file's tests on one worker, so its module
# fixtures are built once, and gives each worker its share of the cores): one pytest process
# keeps only about one core busy. TEST_WORKERS=1 runs them in one process.
TEST_WORKERS ?= 2
PYTEST = $(VENV)/bin/python -m pytest -q $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup,)

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

clean:
	rm -rf $(DEMO_DIR) work_dirs .pytest_cache .mypy_cache .ruff_cache
