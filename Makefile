# framewatch: `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install stack browser demo test bench typecheck down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -e ".[test]"
	@touch $@

stack: install
	$(BIN)/framewatch stack up

demo: stack
	$(BIN)/framewatch demo

# the dashboard test drives Debian's chromium headless
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y chromium || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

test: stack browser
	$(BIN)/python -m pytest -q

bench: stack
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/sink.py
	$(BIN)/python bench/rules.py

typecheck: install
	$(BIN)/mypy framewatch tests bench

down:
	$(BIN)/framewatch stack down

clean: down
	rm -rf $(VENV) .pytest_cache .mypy_cache
