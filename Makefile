# framewatch: `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install stack testtools benchtools testdata demo test bench bench-smoke typecheck down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on -e ".[test,local,onnx]"
	@touch $@

stack: install
	$(BIN)/framewatch stack up

demo: stack
	$(BIN)/framewatch demo

# Debian packages the tests drive: chromium and chromium-driver (the dashboard, through Selenium), prometheus (the
# alert rules against live metrics), mosquitto and mosquitto-clients (the MQTT bridge; mosquitto_sub reads Home
# Assistant's discovery configs), faketime (an extractor with a skewed clock), ffmpeg (ffprobe reads the event clips);
# and the benchmarks: ffmpeg (the Frigate-style ingest baseline)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y
TEST_PACKAGES := chromium chromium-driver prometheus mosquitto mosquitto-clients faketime ffmpeg
BENCH_PACKAGES := ffmpeg
define apt_packages
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing from Debian (a minute or two, once)"; \
		$(APT_INSTALL) $$missing || { $(SUDO) apt-get update && $(APT_INSTALL) $$missing; }; fi
endef
testtools:
	$(call apt_packages,$(TEST_PACKAGES))

benchtools:
	$(call apt_packages,$(BENCH_PACKAGES))

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

BENCH_OUT ?= $(or $(FRAMEWATCH_HOME),$(HOME)/.cache/framewatch)/bench
# each benchmark's size: its defaults for `make bench`, the smallest for `make bench-smoke`
INGEST_SIZE :=
INFERENCE_SIZE :=
SINK_SIZE :=
SCALE_SIZE :=
RULES_SIZE :=
DETECTOR_SIZE :=
define run_benches
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)  # one run's figures only
	FRAMEWATCH_TEST_VIDEO=$(VTEST) $(BIN)/python bench/ingest.py $(INGEST_SIZE) --json $(BENCH_OUT)/ingest.json
	$(BIN)/python bench/inference.py $(INFERENCE_SIZE) --json $(BENCH_OUT)/inference.json
	$(BIN)/python bench/sink.py $(SINK_SIZE) --json $(BENCH_OUT)/sink.json
	$(BIN)/python bench/scale.py $(SCALE_SIZE) --json $(BENCH_OUT)/scale.json
	$(BIN)/python bench/rules.py $(RULES_SIZE) --json $(BENCH_OUT)/rules.json
	FRAMEWATCH_TEST_VIDEO=$(VTEST) $(BIN)/python bench/detector.py $(DETECTOR_SIZE) --json $(BENCH_OUT)/detector.json
endef

bench: stack benchtools testdata
	$(run_benches)
	$(BIN)/python bench/summary.py $(BENCH_OUT)

# CI's: every benchmark at its smallest size, from an empty clips cache (what a fresh stack home has), into a
# fresh folder; fails when a benchmark fails or a figure the summary reads is missing. The figures are produced,
# not judged (a small shared machine). A few minutes.
bench-smoke: BENCH_OUT := $(or $(TMPDIR),/tmp)/framewatch-bench-smoke
bench-smoke: INGEST_SIZE := --seconds 2 --warm-up 4 --max-cameras 20
bench-smoke: INFERENCE_SIZE := --seconds 3 --warm-up 1
bench-smoke: SINK_SIZE := --alerts 200 --seconds 3
bench-smoke: SCALE_SIZE := --seconds 7 --workers 1
bench-smoke: RULES_SIZE := --frames 20
bench-smoke: DETECTOR_SIZE := --frames 16 --worker-size 320 --worker-seconds 11
bench-smoke: stack benchtools testdata
	rm -rf $(or $(FRAMEWATCH_HOME),$(HOME)/.cache/framewatch)/cache/clips
	$(run_benches)
	$(BIN)/python bench/summary.py --check $(BENCH_OUT)

typecheck: install
	$(BIN)/mypy framewatch tests bench

down:
	$(BIN)/framewatch stack down

clean: down
	rm -rf $(VENV) .pytest_cache .mypy_cache
