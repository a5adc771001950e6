# Every target does its own set-up: a fresh Debian machine needs only python3 (3.11) and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all setup demo test lint bench clean bitcoind fuzz-protocol

all: test

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/superscalar demo --clients 8

lint: $(STAMP)
	$(VENV)/bin/ruff check superscalar_plugin tests bench contrib
	$(VENV)/bin/mypy superscalar_plugin

# bitcoind + bitcoin-cli v28+ for the policy tests: from PATH, or built once (~15 min) into
# $SUPERSCALAR_CACHE (default ~/.cache/superscalar); the bin dir goes to .venv/bitcoind-path.
bitcoind: $(STAMP)
	PYTHON=$(PY) bash contrib/bitcoind/build.sh > $(VENV)/bitcoind-path.tmp
	tail -n 1 $(VENV)/bitcoind-path.tmp > $(VENV)/bitcoind-path && rm -f $(VENV)/bitcoind-path.tmp
	@echo "bitcoind: $$(cat $(VENV)/bitcoind-path)"

test: $(STAMP) lint bitcoind
	$(PY) -m pytest -q

# The protocol fuzzer for longer: FUZZ_SECONDS (default 300) of seeds from FUZZ_START (1000).
fuzz-protocol: $(STAMP)
	$(PY) tests/fuzz_protocol/run.py

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
