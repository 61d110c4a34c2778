# One command sets up and runs each job on a fresh clone: `make run`, `make test`, `make bench`.
# Set-up: a virtual environment in .venv with the pinned torch, then stochnet installed
# editable with its C++ (and, where a CUDA toolkit is found, CUDA) extension built.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)
export MAX_JOBS ?= 2

.PHONY: run test bench setup clean

# The main job: a deterministic teacher and an ANIS² student fine-tuned from it on the built-in
# MNIST subset (PGD-7 adversarial training at eps 0.3 on a 50/50 clean + adversarial loss: on
# adversarial examples alone this small CNN collapses to chance), then both attacked (clean, FGSM,
# PGD, EOT-PGD and AutoAttack-rand at eps 0.3, 200 test images): the comparison table.
RUNS := runs
run: setup
	$(PY) -m stochnet train --method standard --model mnist_cnn --data mnist --epochs 5 --batch-size 64 \
		--out $(RUNS)/teacher --overwrite
	$(PY) -m stochnet train --method anis2 --model mnist_cnn --data mnist --epochs 5 --batch-size 64 \
		--teacher $(RUNS)/teacher/checkpoint.pt --eps 0.3 --step-size 0.1 --steps 7 --clean-weight 0.5 \
		--out $(RUNS)/anis2 --overwrite
	$(PY) -m stochnet eval --checkpoint $(RUNS)/teacher/checkpoint.pt --checkpoint $(RUNS)/anis2/checkpoint.pt \
		--attacks fgsm,pgd,eot-pgd,autoattack-rand --limit 200 --repeats 3 --out $(RUNS)/eval

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m bench
	$(PY) -m bench --huge-pages
	$(PY) -m bench --op perturb

setup: $(VENV)/.built

$(VENV)/.deps: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 numpy scipy mlxtend tqdm requests pytest \
		pytest-benchmark ninja pybind11 setuptools wheel
	# The reference attack libraries our attacks are compared with; torchattacks' pins of tqdm and requests are stale.
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	# foolbox, for the Boundary attack comparison; its own pins are also stale.
	$(PY) -m pip install --quiet --no-deps foolbox==3.3.4 eagerpy==0.30.0
	$(PY) -m pip install --quiet GitPython
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build stochnet/_C*.so *.egg-info
