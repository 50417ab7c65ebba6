# Every target bootstraps what it needs (see scripts/bootstrap.sh) and is safe to re-run.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: bootstrap demo test lint typecheck pytest bench contracts clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(BIN)/fabstir-tui demo

test: bootstrap lint typecheck pytest

lint:
	$(BIN)/ruff check fabstir_tui tests bench
	$(BIN)/ruff format --check fabstir_tui tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

bench: bootstrap
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/chain.py --events 50
	$(BIN)/python bench/p2p.py --burst 150
	$(BIN)/python bench/jobs.py
	PYTHON=$(BIN)/python scripts/build-llama-server.sh >/dev/null
	$(BIN)/python bench/api_stream.py
	$(BIN)/python bench/api_connections.py
	$(BIN)/python bench/tui_cost.py

contracts: bootstrap
	node scripts/compile-contracts.mjs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
