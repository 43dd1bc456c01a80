# Every target sets up its own virtual environment: `make test` on a fresh clone just works.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

export AWS_EC2_METADATA_DISABLED := true

.PHONY: dev cluster test test-fast lint bench migrate serve clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

dev: $(INSTALLED)
	$(BIN)/attachments-gateway dev

# The scaled-out topology on this machine (needs Debian's pgbouncer, redis-server, haproxy).
cluster: $(INSTALLED)
	$(BIN)/attachments-gateway cluster

test: $(INSTALLED)
	$(BIN)/pytest

# The quick loop: everything but the slow and fault tests (markers in pyproject.toml).
test-fast: $(INSTALLED)
	$(BIN)/pytest -m "not slow and not faults"

# The benchmark of bench/run.py (about 20 minutes): results in bench/results/.
bench: $(INSTALLED)
	$(BIN)/pip install --quiet 'matplotlib>=3.8'
	$(BIN)/python -m bench.run

lint: $(INSTALLED)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

migrate: $(INSTALLED)
	$(BIN)/attachments-gateway migrate

serve: $(INSTALLED)
	$(BIN)/attachments-gateway serve

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
