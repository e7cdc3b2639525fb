PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv browser test test-slow demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Headless Chromium for the report's browser test (tests/bench/test_report_browser.py); idempotent.
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

test: venv browser
	$(BIN)/python -m pytest -m "not slow"

test-slow: venv
	$(BIN)/python -m pytest -m slow

# The main job: every method on the bundled mini suite with the bundled experts, then its report
# (runs/demo/report.md, report.html, figures/). Rerunning resumes: finished runs are never recomputed.
demo: venv
	$(BIN)/medvtab bench --suite mini --out runs/demo
	$(BIN)/medvtab report runs/demo

bench: venv
	$(BIN)/python benchmarks/skip_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
