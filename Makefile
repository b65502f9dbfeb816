# dfscan: `make demo` shows the product on this machine, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint bench demo clean plugin plugin-deps ide

# torch and torchvision are pinned by pyproject.toml; pip takes them from a local
# wheel cache where the machine has one (see README, "Installing").
# -qq: pip's errors only (it still fails the target); where pip's configuration names local index
# folders that hold only some packages, -q alone prints one warning per package it looked up there.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	$(PIP) install -qq -e '.[test]'
	$(PY) -m tests._view build/ide
	touch $(STAMP)

install: $(STAMP)

# build/ide/dfscan: the installed layout as links, for type checkers and IDEs ([tool.mypy], [tool.pyright]).
ide: $(STAMP)
	$(PY) -m tests._view build/ide

test: $(STAMP) plugin-deps
	$(PY) -m pytest -q --durations=25

# The layers contract of pyproject.toml (also checked inside `make test`, by tests/test_layers.py).
lint: $(STAMP)
	$(PY) -m pytest -q tests/test_layers.py

test-fast: $(STAMP) plugin-deps
	$(PY) -m pytest -q -m "not slow"

# Synthesise, train, export, calibrate, scan into SQLite, query, report: all in demo/.
demo: $(STAMP)
	$(PY) -m dfscan.detector.demo --out demo

bench: $(STAMP)
	$(PY) tests/bench/bench_scan.py

# The browser extension's npm package (onnxruntime-web, pinned by plugin/package-lock.json).
# Without npm the extension's tests skip with the reason.
PLUGIN_STAMP := plugin/node_modules/.package-lock.json
$(PLUGIN_STAMP): plugin/package.json plugin/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd plugin && npm ci --no-audit --no-fund; \
	else echo "warning: npm not found; the browser extension's tests will be skipped" >&2; fi

plugin-deps: $(PLUGIN_STAMP)

# The loadable extension and its zip: make plugin MODEL=path/to/model.onnx
MODEL ?= demo/model/model.onnx
plugin: $(STAMP) $(PLUGIN_STAMP)
	$(PY) -m dfscan.cli plugin build --model $(MODEL) --out plugin/build/dfscan-extension

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache dfscan.db dfscan.db-wal dfscan.db-shm
