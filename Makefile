# One entry point for a new user on a fresh Debian/Ubuntu machine (see README):
#   make demo   - set everything up, then run the main job on the embedded default
#   make test   - set everything up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps python-deps protos demo test test-fast clean

setup: system-deps python-deps

# Real images: Debian's dataset-fashion-mnist (MIT). Installed only when missing.
system-deps:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# torch goes first and pinned: an unpinned torch would pull the newest CUDA build (GBs).
python-deps: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,dev]"
	$(BIN)/couturier triton setup
	touch $@

# Regenerate the gRPC stubs after editing protos/ (an install does it too).
protos: python-deps
	$(BIN)/pip install -q --no-deps -e .

demo: setup
	$(BIN)/couturier demo

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

clean:
	rm -rf var runs build *.egg-info
