# Each target bootstraps .venv (Python 3.11+) on first use, so a fresh clone needs
# nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck test-unit test-integration test-e2e test-infra serve lint bench bundles synth clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "gallop needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# checkov pins old boto3 and packaging, so it gets a virtualenv of its own; only the
# tests run it.
CHECKOV := $(VENV)/checkov/bin/checkov
$(CHECKOV): $(STAMP)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet 'checkov>=3.2'
	touch $(CHECKOV)

demo: $(STAMP)
	$(BIN)/gallop demo

# The README's one test command runs every part; each part has a target of its own.
PYTEST := $(BIN)/pytest -n auto --dist loadfile
test: lint typecheck $(CHECKOV)
	$(PYTEST)

typecheck: $(STAMP)
	$(BIN)/mypy

test-unit: $(STAMP)
	$(PYTEST) tests/unit

test-integration: $(STAMP)
	$(PYTEST) tests/integration

test-e2e: $(STAMP)
	$(PYTEST) tests/e2e

test-infra: $(STAMP) $(CHECKOV)
	$(PYTEST) tests/infra

serve: $(STAMP)
	$(BIN)/gallop serve

bundles: $(STAMP)
	$(BIN)/python layers/build.py

# The stage, and the account and region when the CLI has no credentials to take them from:
# make synth STAGE=prod ACCOUNT=123456789012 REGION=eu-west-1 (prod also needs a subscriber,
# CDK_ARGS='-c alarm_email=ops@example.com').
STAGE ?= dev
synth: bundles
	npx --yes aws-cdk@2 synth --quiet -c stage=$(STAGE) $(if $(ACCOUNT),-c account=$(ACCOUNT)) $(if $(REGION),-c region=$(REGION)) $(CDK_ARGS)

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
