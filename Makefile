# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs the pinned versions of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= demo_out

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
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
