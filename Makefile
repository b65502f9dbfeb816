# dfscan: `make demo` shows the product on this machine, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint bench demo clean

# torch and torchvision are pinned by pyproject.toml; pip takes them from a local
# wheel cache where the machine has one (see README, "Installing").
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	# The face detector's MTCNN weights ship in this wheel; its metadata pins an old torch and
	# numpy although its code runs on ours (tests/test_faces.py proves it), so no dependencies.
	$(PIP) install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The layers contract of pyproject.toml (also checked inside `make test`, by tests/test_layers.py).
lint: $(STAMP)
	$(PY) -m pytest -q tests/test_layers.py

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Synthesise, train, export, calibrate, scan into SQLite, query, report: all in demo/.
demo: $(STAMP)
	$(PY) -m dfscan.detector.demo --out demo

bench: $(STAMP)
	$(PY) tests/bench/bench_scan.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache dfscan.db dfscan.db-wal dfscan.db-shm
