# The two entry points a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser lint test demo demo-mt bench soak clean

setup: $(STAMP)

# torch is pinned first so a CPU machine takes the local CPU build instead of a multi-GB CUDA one.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# The report page tests drive a real headless Chromium: Debian's package (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && $$( [ "$$(id -u)" = 0 ] || echo sudo -n ) sh -c \
	    'apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }'; } || \
	  echo "warning: could not install Chromium (apt-get install chromium): the report page tests will fail" >&2

# Lint and formatting (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/headprune demo

# The translation demo: trains its Marian model on the first run (about 45 minutes on 2 cores), cached after.
demo-mt: setup
	$(BIN)/headprune demo-mt

# The performance benchmark: benchmarks/results/*.json and docs/performance.md. Its headline is `headprune optimize`
# (outputs/bench/optimize, resumed on every run); the other sections took about 28 minutes on 2 cores from a fresh clone.
bench: setup
	$(BIN)/python -m benchmarks.suite

# Sustained load and overload through the served 50 %-pruned MiniLM: benchmarks/results/soak.json and
# docs/operations.md (about 10 minutes on 2 cores; reuses make bench's cached models).
soak: setup
	$(BIN)/python -m benchmarks.soak

clean:
	rm -rf $(VENV) .pytest_cache
