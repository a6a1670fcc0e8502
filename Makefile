# Two commands from a fresh clone (see README):
#   make demo   create .venv, install the pinned stack into it (once), run the main job on the embedded default
#   make test   the README's test command (all tests, slow ones included), in .venv
# PYTHON=python uses an environment you prepared yourself instead of .venv (CI: `.ci/run` calls `make test PYTHON=python`).
# PYTEST_WORKERS sets pytest-xdist's worker count (default 2; 0: one process); the 25 slowest tests are listed at the
# end (a slow CI run says where its time went). PYTEST_ARGS passes options to
# pytest, e.g. `make test PYTEST_ARGS='-m "not slow"'`; PYTEST_STATUS=FILE also writes pytest's exit status
# there (make itself exits 2 on any failure; CI tells "no tests collected", 5, apart).

VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
# the interpreter that creates .venv: the first Python 3.10-3.12 found (setup.cfg: python_requires >=3.10,<3.13)
BASE_PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.10,$(shell command -v python$(v) 2>/dev/null)) python3)
STAMP := $(VENV)/.pixelqa-installed
PYTEST_ARGS ?=
# pytest-xdist workers: two fit a 2-core machine (tests/conftest.py gives each its share of the threads); 0 runs
# every test in one process
PYTEST_WORKERS ?= 2
PYTEST_STATUS ?=

# Only the default interpreter is set up by make; a PYTHON of your own is used as it is.
ifeq ($(PYTHON),$(VENV)/bin/python)
SETUP := $(STAMP)
else
SETUP :=
endif

.PHONY: demo test setup
.DEFAULT_GOAL := demo

demo: $(SETUP)
	$(PYTHON) -m pixelqa.fit recipe=stage3

test: $(SETUP)
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --durations=25 $(PYTEST_ARGS); rc=$$?; $(if $(PYTEST_STATUS),echo $$rc > "$(PYTEST_STATUS)";) exit $$rc

setup: $(SETUP)

# Reinstalled when the pinned dependencies or the install script change.
$(STAMP): setup.cfg pyproject.toml .ci/install
	@$(BASE_PYTHON) -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 13) else "$(BASE_PYTHON) is Python %d.%d; PixelQA needs 3.10 to 3.12: make BASE_PYTHON=/path/to/python3.11" % sys.version_info[:2])'
	test -x $(VENV)/bin/python || $(BASE_PYTHON) -m venv $(VENV)
	PYTHON=$(VENV)/bin/python bash .ci/install
	touch $@
