# `make run` and `make test` do all the set-up themselves: they create .venv if it is missing
# and install what they need (again only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where mnist/ and fashion-mnist/ live: ./data (git-ignored), filled from the official mirrors
# when online; DATA_DIR=path/to/folder for files you already have.
DATA_DIR ?= data
MODELS := mnist-vae mnist-vae-2d mnist-ae mnist-ae-2d fashion-vae

.PHONY: run train-env test lint check docs wheel grpc-code default-models literature-check sample-classifiers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[serve]'
	touch $@

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[serve,docs]'
	touch $@

# torch is pinned to 2.13.0 in the `train` extra; where a CPU wheel of it is on the pip path
# (as on our machines), pip takes it instead of the multi-GB CUDA build. Elsewhere,
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu in the environment points pip at one.
$(VENV)/.installed-train: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# compileall: the service's bytecode up to date even where PYTHONDONTWRITEBYTECODE is set, as
# in an installed wheel; compiling its ~15 modules on every start costs ~0.1 s of start-up.
run: $(VENV)/.installed-serve  ## start the service on the bundled models in ./models
	$(BIN)/python -m compileall -q service
	$(BIN)/python -m service

train-env: $(VENV)/.installed-train  ## create .venv with the training extra only (no test tools)

test: $(VENV)/.installed-dev  ## the whole test suite (no network, no ../shared needed)
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev  ## ruff lint + format check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

# The build hook (docs/hooks.py) imports the service for its OpenAPI document, hence `serve`.
# NO_MKDOCS_2_WARNING: Material prints a banner about MkDocs 2.0 on every build otherwise.
docs: $(VENV)/.installed-docs  ## the documentation site in site/; a broken link fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

grpc-code: $(VENV)/.installed-dev  ## regenerate service/grpc's modules from oip.proto (grpcio-tools)
	$(BIN)/python -m service.grpc.regenerate

wheel: | $(BIN)/python  ## dist/vae_serving-*.whl, e.g. for `pip install 'dist/...whl[client]'`
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w dist .

# Retrain, evaluate, draw and export every bundled model from the MNIST/Fashion-MNIST files in
# $(DATA_DIR) (downloaded there first if missing and online). The three MLPs take about 15 min on
# 2 CPU cores; each conv model about 85 (mnist-vae) or 100 min (fashion-vae) of training on one
# thread and 35-45 min of IWAE over every test image.
# The bundled numbers are computed once and compared with the literature, so their IWAE estimate
# importance-samples every test image (about 5 min per model) rather than the default subset.
default-models: $(addprefix model-,$(MODELS))

model-%: configs/%.toml | $(VENV)/.installed-train
	rm -rf runs/$*
	$(BIN)/python -m training train --config $< --data-dir $(DATA_DIR) --out runs/$*
	$(BIN)/python -m training evaluate runs/$* --iwae-k 1000 --iwae-images all --quiet
	$(BIN)/python -m training report runs/$*
	$(BIN)/python -m training export runs/$* --out models/$*

# The latent-50 dynamically binarised VAE compared with the IWAE paper; not bundled.
# LITERATURE=mnist-vae-50-binarized-conv: the same with the conv architecture of mnist-vae.toml.
LITERATURE ?= mnist-vae-50-binarized
literature-check: | $(VENV)/.installed-train
	rm -rf runs/$(LITERATURE)
	$(BIN)/python -m training train --config configs/$(LITERATURE).toml --data-dir $(DATA_DIR) --out runs/$(LITERATURE)
	$(BIN)/python -m training evaluate runs/$(LITERATURE) --iwae-k 1000 --iwae-images all --quiet
	$(BIN)/python -m training report runs/$(LITERATURE)

# The classifiers that judge VAE samples (`training evaluate`'s sample_quality), written over the
# shipped training/classifiers/*.npz: the same seed gives the same weights on the CPU. About
# 3-10 min each on 2 CPU cores.
sample-classifiers: | $(VENV)/.installed-train
	$(BIN)/python -m training classifier --dataset mnist --data-dir $(DATA_DIR)
	$(BIN)/python -m training classifier --dataset fashion-mnist --data-dir $(DATA_DIR)

clean:
	rm -rf runs site dist build .pytest_cache .mypy_cache .ruff_cache docs/openapi.json
