# warmpool: the two commands that matter are `make dev` and `make test`.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CLIENTS := .clients

.PHONY: dev test soak chaos install lock clients unit lint proto bench clean

## make dev: venv + install + migrate + dev token + every process on embedded defaults (SQLite, in-process Redis)
dev: install
	$(VENV)/bin/warmpool dev

## make test: the whole suite against throwaway PostgreSQL and Redis started (and stopped) for the run
test: install clients
	$(PY) scripts/testenv.py -- $(PY) -m pytest $(PYTEST_ARGS)

## make soak: the lease race and load tests long (20 rounds each, 0.5 s and 2.5 s deadlines, both backends, and under warmpool dev)
soak: install clients
	WARMPOOL_RACE_ROUNDS=20 WARMPOOL_SOAK_ROUNDS=20 WARMPOOL_SOAK_DEADLINES=0.5,2.5 WARMPOOL_DEV_RACE_ROUNDS=20 \
	  $(PY) scripts/testenv.py -- $(PY) -m pytest -q -s tests/e2e/test_lease_race.py tests/e2e/test_dev_lease_race.py

## make chaos: each fault of tests/chaos repeated ITERATIONS times (default 10; the normal suite runs 2)
ITERATIONS ?= 10
chaos: install
	ITERATIONS=$(ITERATIONS) $(PY) scripts/testenv.py -- $(PY) -m pytest tests/chaos -q -s $(PYTEST_ARGS)

## make install: the venv with the project (editable), every extra and the test tools, at the versions of
## requirements.lock (a constraints file: it pins whatever gets installed, so an image can take fewer extras).
LOCK := requirements.lock
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "make install: pip installs warmpool[test] pinned by $(LOCK) into $(VENV) (a minute or two on a fresh machine)"
	$(PIP) install -q --upgrade pip
	set -o pipefail; $(PIP) install --progress-bar off -c $(LOCK) -e '.[test]' | { grep -v '^Requirement already' || true; }
	touch $@

## make lock: re-resolve requirements.lock after a dependency in pyproject.toml changed (uv, from PyPI)
lock:
	test -x $(VENV)/bin/uv || $(PIP) install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
	  --no-header --quiet -o $(LOCK).tmp
	{ echo "# Exact versions of warmpool's dependencies, its extras and the test tools (Python 3.11+; markers say where a pin applies)."; \
	  echo "# Made by \`make lock\` (uv pip compile) from pyproject.toml; used as pip constraints by make install,"; \
	  echo "# .ci/run (through make install) and the Dockerfile. tests/unit/test_dependencies.py checks it is current."; \
	  cat $(LOCK).tmp; } > $(LOCK) && rm $(LOCK).tmp

## The official clients the end-to-end tests drive. Each generation of gitpod-sdk owns the `gitpod`
## import package, so each lives in its own directory and runs in its own subprocess.
clients: $(CLIENTS)/gitpod-1.2.0/.ok $(CLIENTS)/gitpod-0.11.0/.ok

$(CLIENTS)/gitpod-%/.ok: | install
	$(PIP) install -q --target $(CLIENTS)/gitpod-$* gitpod-sdk==$*
	touch $@

unit: install
	$(PY) -m pytest tests/unit -q

## make lint: ruff (pyflakes, pycodestyle, bugbear, …; every `# noqa` must still be needed), mypy (typed defs,
## every `type: ignore` still needed) and the import-linter contracts; .ci/run runs it before `make test`.
lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: install
	PYTHON=$(PY) scripts/genproto.sh

clean:
	rm -rf .data .pytest_cache .hypothesis
