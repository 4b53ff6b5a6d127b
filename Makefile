# One entry point for a new user on a fresh Debian/Ubuntu machine (see README):
#   make demo   - set everything up, then run the main job on the embedded default
#   make test   - set everything up, then run the test suite
#   make test-fast - the unit tests only (no training, no Triton; under a minute)
#   make images - build every service image (docker, or buildah + a Debian-built Python base; docs/deployment.md)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps python-deps protos pkgview check demo test test-fast images clean

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

# Static tools cannot see the editable finder that maps services/, export/ and protos/couturier/v1/
# into the `couturier` package: build/pkgview/couturier holds one symlink per mapped folder (new
# files show up without a reinstall). Point an editor's extra import path at build/pkgview.
pkgview:
	@mkdir -p build/pkgview/couturier
	@ln -sfn ../../../services build/pkgview/couturier/services
	@ln -sfn ../../../export build/pkgview/couturier/export
	@ln -sfn ../../../protos/couturier/v1 build/pkgview/couturier/v1

# Gates: lint, format, types (strict for the serving package, lighter for export), the import contract
# (pyproject [tool.importlinter]).
check: setup pkgview
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p couturier.services -p couturier.export
	cd build/pkgview && ../../$(BIN)/lint-imports --config ../../pyproject.toml

demo: setup
	$(BIN)/couturier demo

test: setup
	$(BIN)/pytest -q

# Unit tests only (fakes instead of trained models, no Triton, no training): under a minute.
test-fast: setup
	$(BIN)/pytest -q -m "not slow and not integration"

# Every target of docker/service.Dockerfile as couturier/<target>:<pyproject version>. Docker when its
# daemon answers, else buildah (as root, via sudo; `apt-get install buildah debootstrap`), whose base is the stand-in
# for python:3.11-slim-bookworm that docker/python-base.sh builds from Debian packages (once).
images:
	@command -v buildah >/dev/null || docker info >/dev/null 2>&1 || { \
	  echo "make images: needs a running Docker daemon, or buildah and debootstrap:"; \
	  echo "  $(SUDO) apt-get install buildah debootstrap"; exit 2; }
	scripts/build_images.sh

clean:
	rm -rf var runs build *.egg-info
