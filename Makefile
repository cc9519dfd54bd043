# django-mirror developer tasks.  `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV  := .venv
PY    := $(VENV)/bin/python
# Touched after a successful install; rebuilt only when pyproject.toml changes.
STAMP := $(VENV)/.installed

# Interpreter used to create the venv: the newest of python3.13, 3.12, 3.11 that runs
# (the newest Python gets the newest Django), looked for in pyenv's versions first (its
# shims only run the global version), then on PATH, else python3. `make test` then runs
# the newest release of every dependency; `make test-oldest` the lower bounds.
PYTHON ?= $(shell for v in 3.13 3.12 3.11; do \
  for dir in $$(printf '%s' "$(PYENV_PATHS)" | tr ':' ' ') ''; do \
    exe="$${dir:+$$dir/}python$$v"; \
    if "$$exe" -c '' >/dev/null 2>&1; then echo "$$exe"; exit 0; fi; \
  done; done; echo python3)

# Extra arguments for every pytest run, e.g. `make test PYTEST_ARGS="-x -k kinesis"`.
PYTEST_ARGS ?=

# Database URLs of the PostgreSQL and MariaDB passes.
PG_SOURCE_URL    ?= postgres://postgres@127.0.0.1:5432/mirror_source
PG_TARGET_URL    ?= postgres://postgres@127.0.0.1:5432/mirror_target
MYSQL_SOURCE_URL ?= mysql://root@127.0.0.1:3306/mirror_source
MYSQL_TARGET_URL ?= mysql://root@127.0.0.1:3306/mirror_target

# Environment for Django commands run from the repo root.
DJANGO_ENV := PYTHONPATH=. DJANGO_SETTINGS_MODULE=tests.settings
# Same, with any database URLs from the caller's environment removed (=> SQLite).
SQLITE_ENV := env -u DATABASE_URL -u TARGET_DATABASE_URL $(DJANGO_ENV)

# System packages: `make venv` / `make test` install Debian's libmariadb-dev and pkg-config
# (headers to build mysqlclient, for the MariaDB pass) and `make browser` chromium and
# chromium-driver (for the dashboard's browser test) with apt-get, as root only, saying
# so first. APT=no installs nothing: those passes are then skipped with the reason.
APT ?= yes

# $(call port_open,HOST,PORT): shell condition, true if a TCP connect succeeds within 1 s.
port_open = $(PY) -c "import socket; socket.create_connection(('$(1)', $(2)), timeout=1).close()" 2>/dev/null

.PHONY: help venv mysql-extra test check test-sqlite test-postgres test-mariadb test-oldest test-django \
        test-package docs dist demo bench lint tox clean browser screenshot

help:
	@echo "make venv           create $(VENV) and install '.[dev]' (+ '.[mysql]' if it builds)"
	@echo "make test           ruff, layer contract, mypy, migrations check, pytest on SQLite, PostgreSQL, MariaDB, oldest deps, Django's suite,"
	@echo "                    the docs site and the wheel (APT=no: install no system package, skip what needs one)"
	@echo "make test-sqlite | test-postgres | test-mariadb   one pytest pass"
	@echo "make test-oldest    pytest on SQLite with the lowest supported dependencies (tox -e oldest)"
	@echo "make test-django    Django's own tests mirrored in phases capture and mirror, failures re-run stock (SQLite, PostgreSQL)"
	@echo "make test-package   make docs + make dist"
	@echo "make docs           build the docs site strictly (mkdocs.yml) into .cache/site"
	@echo "make dist           build the wheel and sdist into dist/, twine check them, run the example project from the wheel"
	@echo "make browser        install chromium + chromedriver (apt-get, as root) for the browser test"
	@echo "make screenshot     run the dashboard's browser test and save docs/img/dashboard.png"
	@echo "make demo           run the example project's mirror_demo command"
	@echo "make bench          run the benchmarks"
	@echo "make lint           ruff check + ruff format --check + the layer contract (lint-imports) + mypy"
	@echo "make tox            run tox (exposes pyenv's 3.12/3.13 if present)"
	@echo "make clean          remove the venv, sqlite files and caches"

# --- environment ---------------------------------------------------------------

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -x $(PY) ] && [ "$$($(PY) -c 'import sys; print(sys.version)')" != "$$($(PYTHON) -c 'import sys; print(sys.version)')" ]; then \
	  echo "$(VENV) runs another Python than $(PYTHON): making it anew"; rm -rf $(VENV); \
	fi
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@$(MAKE) --no-print-directory mysql-extra
	@touch $@

# Best effort: mysqlclient needs the MariaDB client headers. Never fails the build.
mysql-extra:
	@if ! { command -v mysql_config || command -v mariadb_config || pkg-config --exists mariadb; } >/dev/null 2>&1; then \
	  if [ "$(APT)" != no ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "NOTICE: installing the system packages libmariadb-dev pkg-config with apt-get (as root):"; \
	    echo "NOTICE: mysqlclient, the driver of the MariaDB test pass, builds against them. APT=no skips this."; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y libmariadb-dev pkg-config \
	      || { apt-get update && apt-get install -y libmariadb-dev pkg-config; } \
	      || true; \
	  else \
	    echo "NOTICE: no MariaDB client headers, and $(if $(filter no,$(APT)),APT=no,no root apt-get) to install libmariadb-dev pkg-config."; \
	  fi; \
	fi; \
	if ! $(PY) -m pip install -e '.[mysql]'; then \
	  echo ""; \
	  echo "NOTICE: could not install the 'mysql' extra (mysqlclient);"; \
	  echo "NOTICE: the MariaDB test pass will be skipped. Install libmariadb-dev + pkg-config and run 'make mysql-extra'."; \
	  echo ""; \
	fi

# --- tests ---------------------------------------------------------------------

# Stops at the first failing step. The four pytest passes, Django's suite and the docs
# site and wheel run side by side (each has its own database names and files; many of
# their tests wait on threads, moto, subprocesses, pip and the database servers rather
# than the CPU, and one run's idle moments are another's), so make test stays under 30
# minutes on two cores; each run's output is printed whole when it ends.
test: $(STAMP)
	@$(MAKE) --no-print-directory check
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory -j6 --output-sync=target \
	  test-sqlite test-postgres test-mariadb test-oldest test-django test-package

# Lint, format (Python files and the Python blocks of the docs), the layer contract of
# docs/architecture.md (pyproject.toml's [tool.importlinter]), the type check of
# django_mirror/ (mypy, configured by pyproject.toml's [tool.mypy]) and "no missing migrations".
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=. $(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(SQLITE_ENV) $(PY) -m django makemigrations --check --dry-run

test-sqlite: $(STAMP)
	@echo "== tests on SQLite"
	$(SQLITE_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	@echo "== tests on PostgreSQL"
	@if $(call port_open,127.0.0.1,5432); then \
	  set -x; \
	  $(DJANGO_ENV) DATABASE_URL=$(PG_SOURCE_URL) TARGET_DATABASE_URL=$(PG_TARGET_URL) \
	    $(PY) -m pytest $(PYTEST_ARGS); \
	else \
	  echo "skipped: PostgreSQL not reachable on 127.0.0.1:5432"; \
	fi

test-mariadb: $(STAMP)
	@echo "== tests on MariaDB"
	@if ! $(call port_open,127.0.0.1,3306); then \
	  echo "skipped: MariaDB not reachable on 127.0.0.1:3306"; \
	elif ! $(PY) -c "import MySQLdb" 2>/dev/null; then \
	  echo "skipped: MySQLdb (mysqlclient) not importable in $(VENV); see 'make mysql-extra'"; \
	else \
	  set -x; \
	  $(DJANGO_ENV) DATABASE_URL=$(MYSQL_SOURCE_URL) TARGET_DATABASE_URL=$(MYSQL_TARGET_URL) \
	    MIRROR_WAL_TESTS=no $(PY) -m pytest $(PYTEST_ARGS); \
	fi

# The lower bound of every dependency (requirements/oldest.txt), on Python 3.11.
test-oldest: $(STAMP)
	@echo "== tests on SQLite with the oldest supported dependencies"
	@if python3.11 -c '' 2>/dev/null || [ -n "$(PYENV_PATHS)" ]; then \
	  env -u DATABASE_URL -u TARGET_DATABASE_URL PATH="$$PATH$(PYENV_PATHS)" \
	    MIRROR_WAL_TESTS=no $(VENV)/bin/tox -e oldest -- $(PYTEST_ARGS); \
	else \
	  echo "skipped: no python3.11 to run the oldest supported dependencies on"; \
	fi

# Django's own test suite (the installed version's sdist, from PyPI, cached in
# .cache/django-suite) run with every model mirrored in phase capture, then in phase
# mirror, on SQLite and on PostgreSQL when it answers; every test that did not pass
# mirrored is run again stock, and any that passes there fails the target.
# See docs/django-suite.md.
# E.g. `make test-django DJANGO_SUITE_ARGS="--backend sqlite --phase mirror"`.
DJANGO_SUITE_ARGS ?=
test-django: $(STAMP)
	@echo "== Django's test suite, stock and mirrored"
	$(PY) -m django_suite --parallel 2 --phase both $(DJANGO_SUITE_ARGS)

# What a release uploads, checked: the docs site built strictly (a broken link, anchor or
# API reference fails it) and the wheel and sdist built, passed by twine and the wheel
# run from a fresh venv (tests/test_wheel.py).
test-package: $(STAMP)
	@echo "== the docs site and the distribution"
	@$(MAKE) --no-print-directory docs dist

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs site built in .cache/site"

# Built from a copy of the files git knows (tracked or new, not ignored): nothing left in
# the work tree gets in, and setuptools' egg-info is not written beside a tox build
# running in parallel.
dist: $(STAMP)
	rm -rf dist
	@src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	  git ls-files -z --cached --others --exclude-standard \
	    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$$src" && \
	  echo "$(PY) -m build --outdir dist <copy of the checkout>" && \
	  $(PY) -m build --outdir "$(CURDIR)/dist" "$$src" >"$$src.log" 2>&1 \
	  || { cat "$$src.log"; rm -f "$$src.log"; exit 1; }; \
	rm -f "$$src.log"; ls dist
	$(VENV)/bin/twine check --strict dist/*
	MIRROR_WHEEL_DIR=dist $(SQLITE_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_wheel.py

# --- other tasks -----------------------------------------------------------------

# Best effort: Debian's chromium and chromedriver for tests/test_dashboard_browser.py
# (which skips without them). Never fails the build.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
	  :; \
	elif [ "$(APT)" != no ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "NOTICE: installing the system packages chromium chromium-driver with apt-get (as root):"; \
	  echo "NOTICE: tests/test_dashboard_browser.py drives the admin dashboard in a real browser. APT=no skips this."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y chromium chromium-driver \
	    || { apt-get update && apt-get install -y chromium chromium-driver; } \
	    || echo "NOTICE: could not install chromium; the browser test will be skipped."; \
	else \
	  echo "NOTICE: no /usr/bin/chromium + /usr/bin/chromedriver, and $(if $(filter no,$(APT)),APT=no,no root apt-get) to install them;"; \
	  echo "NOTICE: the dashboard's browser test will be skipped."; \
	fi

# The dashboard's screenshot for docs/admin.md; fails when the browser test could not run.
screenshot: $(STAMP) browser
	@start=$$(mktemp); \
	MIRROR_SAVE_SCREENSHOT=1 $(SQLITE_ENV) $(PY) -m pytest -q -rs tests/test_dashboard_browser.py \
	  && test -n "$$(find docs/img/dashboard.png -newer $$start 2>/dev/null)"; \
	status=$$?; rm -f $$start; \
	if [ $$status = 0 ]; then echo "saved docs/img/dashboard.png"; \
	else echo "no screenshot saved (see above)"; exit 1; fi

# Databases of the demo's PostgreSQL pass (created when missing).
PG_DEMO_SOURCE_URL ?= postgres://postgres@127.0.0.1:5432/mirror_demo_source
PG_DEMO_TARGET_URL ?= postgres://postgres@127.0.0.1:5432/mirror_demo_target

# The runbook on the example project, then again with the follows going to DynamoDB, then
# (where PostgreSQL runs) on two PostgreSQL databases, whose foreign keys the live writes
# of the promoted and rolled-back group must satisfy.
demo: $(STAMP)
	cd example_project && ../$(PY) manage.py mirror_demo
	cd example_project && MIRROR_TARGET=dynamodb ../$(PY) manage.py mirror_demo --operations 1200
	@if $(call port_open,127.0.0.1,5432); then \
	  $(PY) -c "import sys, psycopg; from urllib.parse import urlsplit; \
	    names = [urlsplit(u).path.strip('/') for u in sys.argv[1:]]; \
	    url = urlsplit(sys.argv[1]); \
	    c = psycopg.connect(host=url.hostname, port=url.port or 5432, user=url.username, dbname='postgres', autocommit=True); \
	    [c.execute('CREATE DATABASE \"%s\"' % n) for n in names \
	     if not c.execute('SELECT 1 FROM pg_database WHERE datname = %s', (n,)).fetchone()]" \
	    "$(PG_DEMO_SOURCE_URL)" "$(PG_DEMO_TARGET_URL)" && \
	  cd example_project && DATABASE_URL="$(PG_DEMO_SOURCE_URL)" TARGET_DATABASE_URL="$(PG_DEMO_TARGET_URL)" \
	    ../$(PY) manage.py mirror_demo --operations 1200; \
	else echo "PostgreSQL is not running on 127.0.0.1:5432: the demo's PostgreSQL pass is skipped"; fi

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PYTHONPATH=. $(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# tox needs python3.12/python3.13 on PATH. pyenv's shims only resolve the global
# version (and tox drops PYENV_VERSION), so append each installed 3.11-3.13 bin dir.
PYENV_PATHS = $(shell command -v pyenv >/dev/null 2>&1 && \
  for v in $$(pyenv versions --bare | grep -E '^3\.1[123]\.[0-9]+$$'); do \
    printf ':%s' "$$(pyenv root)/versions/$$v/bin"; done)

tox: $(STAMP)
	PATH="$$PATH$(PYENV_PATHS)" $(VENV)/bin/tox $(TOX_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .tox build dist *.egg-info .cache/site
	find tests example_project -name '*.sqlite3*' -type f -delete 2>/dev/null || true
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
