# One command sets up and runs each job on a fresh clone: `make run`, `make test`, `make bench`.
# Set-up: a virtual environment in .venv with the pinned torch, then stochnet installed
# editable with its C++ (and, where a CUDA toolkit is found, CUDA) extension built.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)
export MAX_JOBS ?= 2

.PHONY: run test bench setup clean

run: setup
	$(PY) -m bench
	$(PY) -m bench --huge-pages

test: setup
	$(PY) -m pytest

bench: run
	$(PY) -m bench --op perturb

setup: $(VENV)/.built

$(VENV)/.deps: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 numpy scipy mlxtend tqdm requests pytest \
		pytest-benchmark ninja pybind11 setuptools wheel
	# The reference attack library our attacks are compared with; its pins of tqdm and requests are stale.
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build stochnet/_C*.so *.egg-info
