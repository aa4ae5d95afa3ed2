# Two entry points, both from a fresh clone:
#   make demo   set up, then run the main job (PPO sigma scheduler on DDIMSigma-v0, embedded default model)
#   make test   set up, then run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test lint clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist package where we run as root with apt;
# otherwise point ROBUST_ENVS_DATA at a directory holding the four IDX files.
data:
	@if [ -z "$$ROBUST_ENVS_DATA" ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	  else \
	    echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set ROBUST_ENVS_DATA"; exit 1; \
	  fi; \
	fi

demo: setup
	$(BIN)/python -m agents.demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check robust_envs agents benchmarks tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
