# The two commands of the README:  make lab   and   make test.
# Each creates .venv when it is missing and installs what it needs into it.
# torch is pinned to the CPU wheel this project is developed against; a GPU user installs a
# CUDA build of torch first (see README) and then `pip install -e '.[notebook]'`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: lab test unit nbval notebooks browser-deps clean parity

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.notebook-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[notebook]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[notebook,test]'
	touch $@

# Jupyter refuses to run as root without --allow-root (containers often run as root).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(VENV)/.notebook-installed
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --no-browser --ip=127.0.0.1 $(ROOT_FLAG)

# Chromium for the real-browser test (Debian packages; needs root where they are missing).
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "browser-deps: apt-get could not install chromium; the browser test will be skipped"; \
	else echo "browser-deps: /usr/bin/chromium is missing and cannot be installed here (not root or no apt-get); the browser test will be skipped"; fi

unit: $(VENV)/.test-installed browser-deps
	$(BIN)/python -m pytest tests

# Runs every notebook and compares the cells marked # NBVAL_CHECK_OUTPUT with their saved outputs.
nbval: $(VENV)/.test-installed
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider notebooks/

test: unit nbval

# Re-executes the notebooks from their jupytext sources (notebooks/NN_name.py) and writes the
# outputs into the paired .ipynb. `jupytext --sync` first takes the newer side of each pair as the
# inputs (an edited .py, or a .ipynb saved by JupyterLab) and writes it to the other side.
NOTEBOOK_SOURCES := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
notebooks: $(VENV)/.notebook-installed
	$(BIN)/jupytext --sync $(NOTEBOOK_SOURCES)
	PYTHONHASHSEED=0 $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=900 --ExecutePreprocessor.record_timing=False $(NOTEBOOK_SOURCES:.py=.ipynb)
	$(BIN)/jupytext --sync $(NOTEBOOK_SOURCES)

# The reference environment for the parity tests (tests_parity/): torchvision from the package index with
# the index's own torch build (torchvision's wheels do not load with the CPU torch wheel of .venv).
# "torch===X" asks for exactly the version string X, so a local X+cpu wheel that pip may find through its
# find-links cannot stand in for the index build. Built once (stamp file); segviz's own install keeps that torch.
PARITY      := .venv-parity
PARITY_BIN  := $(PARITY)/bin
PARITY_TORCH ?= 2.13.0
PARITY_TORCHVISION ?= 0.28.0

$(PARITY)/.installed: pyproject.toml
	test -x $(PARITY_BIN)/python || $(PYTHON) -m venv $(PARITY)
	$(PARITY_BIN)/python -m pip install -q --no-cache-dir "torch===$(PARITY_TORCH)" "torchvision==$(PARITY_TORCHVISION)" transformers
	$(PARITY_BIN)/python -m pip install -q --no-cache-dir -e '.[test]'
	$(PARITY_BIN)/python -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
	touch $@

# Numerical parity with the reference implementations (torchvision's DeepLabv3, ResNet and ops.deform_conv2d).
parity: $(PARITY)/.installed
	$(PARITY_BIN)/python -m pytest -p no:cacheprovider tests_parity

clean:
	rm -rf $(VENV) $(PARITY) *.egg-info test-output
