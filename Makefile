# Each target bootstraps .venv (Python 3.11+) on first use, so a fresh clone needs
# nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test serve lint bench bundles synth clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gallop needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gallop demo

test: $(STAMP)
	$(BIN)/pytest

serve: $(STAMP)
	$(BIN)/gallop serve

bundles: $(STAMP)
	$(BIN)/python layers/build.py

synth: bundles
	npx --yes aws-cdk@2 synth --quiet

lint: $(STAMP)
	$(BIN)/ruff check shared functions tests benchmarks infra layers training_jobs
	$(BIN)/ruff format --check shared functions tests benchmarks infra layers training_jobs

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest_100k.py
	$(BIN)/python benchmarks/features_1m.py
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.serving

clean:
	rm -rf $(VENV) build cdk.out *.egg-info shared/*.egg-info
