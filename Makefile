# The two README commands: `make demo` (the main job) and `make test`.  Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -c constraints.txt
STAMP := $(VENV)/.lossfloor-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test install fashion-data

demo: $(STAMP)
	$(BIN)/lossfloor estimate --data digits --out out/demo --force
	@echo "outputs: out/demo/optimal_loss.json, out/demo/optimal_loss.csv, out/demo/optimal_loss.png"

test: $(STAMP) fashion-data
	$(BIN)/pytest -q

install: $(STAMP)

# torch first, pinned to the CPU build, so that nothing later pulls a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[metrics,test,diffusers]'
	touch $@

# The Debian Fashion-MNIST package for the tests marked `fashion`; they skip (with the reason) when it
# cannot be installed, so this never fails the test run.
fashion-data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "no apt-get: the Fashion-MNIST tests will skip"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "not root and no passwordless sudo: the Fashion-MNIST tests will skip"; exit 0; fi; \
	{ $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } || \
	echo "could not install dataset-fashion-mnist: the Fashion-MNIST tests will skip"
