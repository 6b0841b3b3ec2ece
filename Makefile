PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check bench schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,langgraph]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lazarus demo

test: $(STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff check lazarus_bus
	$(BIN)/mypy lazarus_bus
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,langgraph,bench]'
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

schemas: $(STAMP)
	$(BIN)/lazarus schema export --out schemas
	$(BIN)/lazarus schema catalogue > docs/events.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
