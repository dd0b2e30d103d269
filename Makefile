# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= demo_out
# pytest-xdist workers of `make test`, each with one compute thread (OMP_NUM_THREADS=1, unless set):
# the suite spends much of its time starting processes, servers and clusters, so two one-thread
# workers finish it about 1.7x sooner than one two-thread pytest on 2 cores. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: demo test install install-test clean

$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e ".[dev,label,cluster,peer]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/monai-liver demo --out $(OUT)

test: install-test
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
