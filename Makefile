# The README's commands call these targets. `make demo` and `make test` each set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where the MNIST files live (mnist/ and binarized_mnist/); ../shared/data in this workplace.
export MISSIWAE_DATA_DIR ?= $(abspath ../shared/data)
# numpy asks for 2 MiB pages for every array of 4 MiB or more; on the VMs this project is built
# and tested on, faulting those in made reading the MNIST training split 2.5x slower (4.1 s vs
# 1.7 s: python -m benchmarks.bench_hugepages). Read when numpy is imported; =1 turns it back on.
export NUMPY_MADVISE_HUGEPAGE ?= 0
DEMO_DIR ?= runs/demo
RUN_DIR ?= runs/smoke
PRESET ?= smoke
SPACE ?= paper

.PHONY: setup run sweep demo mlflow-ui test test-fast test-statistical lint clean bench bench-setup bench-uci

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[pipeline,dev]"
	touch $@

# The whole job on an embedded local Ray, MLflow in a sqlite file under $(RUN_DIR).
run: setup
	$(BIN)/python pipelines/full.py --config $(PRESET) --set run_dir=$(RUN_DIR)

# A Ray Tune sweep (tune/spaces/$(SPACE).yaml) over the $(PRESET) preset; runs again = resume.
sweep: setup
	$(BIN)/python -m tune.sweep --space $(SPACE) --config $(PRESET) --set run_dir=$(RUN_DIR)

# MLflow's UI for that run directory, on 127.0.0.1 only.
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN_DIR))/mlflow.db \
		--default-artifact-root file://$(abspath $(RUN_DIR))/mlartifacts --host 127.0.0.1 --port 5000 --workers 1

# Small end to end run on static binarized MNIST with 50% MCAR: train -> evaluate -> impute.
demo: setup
	$(BIN)/missiwae train --config configs/demo.yaml --out $(DEMO_DIR) --fresh --no-progress
	$(BIN)/missiwae evaluate --checkpoint $(DEMO_DIR)
	$(BIN)/missiwae impute --checkpoint $(DEMO_DIR)

# The MIWAE paper's UCI protocol on scikit-learn's bundled tables (writes benchmarks/results/uci.*).
bench-uci: setup
	$(BIN)/python benchmarks/uci.py

# ruff, mypy, and the import contracts of .importlinter (layers only point down).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# Claims tested over many replications (tests/statistical): about half an hour on 2 cores.
test-statistical: setup
	$(BIN)/python -m pytest tests/statistical -m statistical -s

# The library's quick tests (math, invariants, CLI, estimator): under a minute, no Ray, no MNIST.
test-fast: setup
	$(BIN)/python -m pytest tests/library -m "not slow and not mnist" -q

# The peer (hyperimpute's MIWAE) lives in its own virtual environment: its pins clash with ours.
# Full install first; if a dependency cannot be installed, the plugin's own imports only.
PEER_VENV ?= $(abspath .peer-venv)
export MISSIWAE_PEER_PYTHON ?= $(PEER_VENV)/bin/python
PEER_MINIMAL_DEPS := torch==2.14.1 numpy pandas scikit-learn scipy optuna loguru==0.6.0 pydantic cloudpickle

bench-setup: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet hyperimpute==0.1.17 torch==2.14.1 || \
		( $(PEER_VENV)/bin/python -m pip install --quiet --no-deps hyperimpute==0.1.17 && \
		  $(PEER_VENV)/bin/python -m pip install --quiet $(PEER_MINIMAL_DEPS) )
	touch $@

# Throughput, memory, fraction of peak, Ray scaling: tables on stdout, JSON in benchmarks/results/.
# Runs our own benchmarks even when the peer cannot be installed (the scripts say why).
bench: setup
	-$(MAKE) bench-setup
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_impute
	$(BIN)/python -m benchmarks.bench_ray
	$(BIN)/python -m benchmarks.bench_hugepages

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
