# framewatch: `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install stack testtools testdata demo test bench typecheck down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -e ".[test,local,onnx]"
	@touch $@

stack: install
	$(BIN)/framewatch stack up

demo: stack
	$(BIN)/framewatch demo

# Debian packages the tests drive: chromium (the dashboard, headless), prometheus (the alert rules against live
# metrics), mosquitto (the MQTT bridge)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y
TEST_PACKAGES := chromium prometheus mosquitto
testtools:
	@missing=""; for p in $(TEST_PACKAGES); do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing from Debian (a minute or two, once)"; \
		$(APT_INSTALL) $$missing || { $(SUDO) apt-get update && $(APT_INSTALL) $$missing; }; fi

# the rules' end-to-end tests play OpenCV's vtest.avi: the copy beside the checkout when there is one, else
# the one in Debian's opencv-doc package (downloaded, not installed; the same file)
VTEST := $(or $(FRAMEWATCH_HOME),$(HOME)/.cache/framewatch)/cache/vtest.avi
testdata: $(VTEST)

$(VTEST):
	@mkdir -p $(dir $@)
	@if [ -f ../shared/data/vtest.avi ]; then cp ../shared/data/vtest.avi $@.part; else \
		tmp=$$(mktemp -d) && (cd $$tmp && apt-get download opencv-doc) && \
		dpkg-deb --fsys-tarfile $$tmp/opencv-doc_*.deb | \
		tar -xO ./usr/share/doc/opencv-doc/examples/data/vtest.avi > $@.part && rm -rf $$tmp; fi
	@mv $@.part $@

test: stack testtools testdata
	FRAMEWATCH_TEST_VIDEO=$(VTEST) $(BIN)/python -m pytest -q --durations=15

bench: stack testdata
	FRAMEWATCH_TEST_VIDEO=$(VTEST) $(BIN)/python bench/ingest.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/sink.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/rules.py
	FRAMEWATCH_TEST_VIDEO=$(VTEST) $(BIN)/python bench/detector.py

typecheck: install
	$(BIN)/mypy framewatch tests bench

down:
	$(BIN)/framewatch stack down

clean: down
	rm -rf $(VENV) .pytest_cache .mypy_cache
