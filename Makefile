# Two commands: `make run` and `make test`. Each builds its own environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test proto lint bench bench-verify bench-clients clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/agentgw serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider $(ARGS)

proto: $(STAMP)
	$(BIN)/python protos/generate.py .

lint: $(STAMP)
	$(BIN)/ruff check gateway clients tests bench deploy
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

bench-clients: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/redis_clients.py $(ARGS)

bench-verify: $(STAMP)
	$(BIN)/python bench/verify_bench.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
