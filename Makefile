PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Two installs, two stamps: `make demo` needs the core only, `make test` every extra; either may come first.
CORE := $(VENV)/.installed-core
DEV := $(VENV)/.installed-dev

.PHONY: venv browser test test-slow demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The core package: what the main job imports (docs/install.md lists the extras).
$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Every extra, and pytest, hypothesis and Playwright for the tests.
$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Everything installed, without running anything (what ../shared/contract/check expects in .venv).
venv: $(DEV)

# Headless Chromium for the report's browser test (tests/bench/report/test_browser.py); idempotent.
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

test: $(DEV) browser
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(DEV)
	$(BIN)/python -m pytest -m slow

# The main job: every method on the bundled mini suite with the bundled experts, then its report
# (runs/demo/report.md, report.html, figures/). Rerunning resumes: finished runs are never recomputed.
demo: $(CORE)
	$(BIN)/medvtab bench --suite mini --out runs/demo
	$(BIN)/medvtab report runs/demo

bench: $(CORE)
	$(BIN)/python benchmarks/skip_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
