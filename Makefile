# Build and test entry points for django-resilient-sessions.
#
#   make venv               create .venv: the package (editable) and the `dev` dependency group
#                           (test, lint, bench, docs, matrix and dist tools; pip >= 25.1)
#   make redis              make sure a redis-server binary is available (tests start their own)
#   make chromium           make sure Debian's Chromium is there for the browser test (tests/e2e)
#   make demo               run the example site (example_project/) on http://127.0.0.1:8000
#   make lint               ruff check, ruff format --check, mypy
#   make docs               the documentation site (Sphinx, warnings are errors) into
#                           docs/_build/html
#   make dist               build the sdist and the wheel into dist/ and check them
#                           (twine check --strict)
#   make messages           update the translation catalogs (django_resilient_sessions/locale/) and
#                           compile them (needs GNU gettext; the .mo files are committed, so
#                           neither tests nor installs need it)
#   make test               lint + docs + dist + pytest (SQLite) + pytest (PostgreSQL, if
#                           reachable) + Django's own session test suite against our engine
#                           + the django-allauth site (make test-allauth)
#                           + the supported matrix (make test-matrix) + the peer suites
#   make test-sqlite        pytest with DRS_TEST_DB=sqlite
#   make test-postgres      pytest with DRS_TEST_DB=postgres (needs PostgreSQL on DRS_TEST_PG_HOST:PORT)
#   make test-adoption      adoptsessions over 10,000 and 100,000 sessions with flat memory
#                           (PostgreSQL's django_session and Django's cache engine keys; several
#                           minutes; DRS_ADOPT_SCALE sets the large size)
#   make test-django-suite  Django's sessions_tests run against our session engine
#   make test-allauth       django-allauth (login, logout, sessions page, headless API) next to
#                           our engine through Redis outages (SQLite, then PostgreSQL if reachable)
#   make test-matrix        every supported Django x Python pair and the lowest dependency
#                           versions, one nox session each (noxfile.py; Pythons from pyenv
#                           or PATH): the suite and Django's session tests, on SQLite
#   make django-suite-fetch download Django's sessions_tests for the installed Django version
#   make test-peer          peer suites: Django's own tests of the session-using apps (SQLite and
#                           PostgreSQL, USE_TZ off and on) and django-allauth's suite, each with
#                           our engine and Django's cache engine; fails on an engine-only
#                           failure not in tests/peer/expected_failures.toml (own venv)
#   make peer-fetch         download those suites (Django's and allauth's sdists) into .cache/
#   make chaos              full chaos run: 2 gunicorn servers, Redis + Sentinel, 50 users, every
#                           fault, PostgreSQL (python -m chaos; the short form runs in make test),
#                           then make model on PostgreSQL
#   make chaos-cluster      the chaos run against a 3-master, 3-replica Redis Cluster: a master
#                           killed, a shard down, slots resharded, a node hung, the cluster
#                           restarted empty (python -m chaos cluster; short form in make test)
#   make fuzz               full HTTP fuzz: 12,000 mutated session/backup cookies at a live server
#   make model              the model-based test (tests/test_model.py) at length: 200 random
#                           histories of 50 steps (users, devices, outages, replays, one fault
#                           per step), a new seed each run (about 5 minutes; MODEL_EXAMPLES,
#                           MODEL_STEPS; DRS_TEST_DB picks the database); its bounded,
#                           derandomized form runs in make test; make chaos runs this too
#   make bench              benchmarks against Django's engines, Redis Cluster against standalone
#                           Redis, the sizing measurements (~12 min; needs PostgreSQL):
#                           writes benchmarks/results/ (JSON, latest.md, PNG charts)
#   make bench-smoke        the same with tiny counts (~1 min), into benchmarks/results/smoke/
#   make wrk                make sure wrk is there for `make bench` (else a Python load generator)
#   make clean              remove the venv, caches and build/test artifacts
#
# Extra pytest arguments: make test-sqlite PYTEST_ARGS="-k breaker -x"
# Extra chaos/fuzz arguments: make chaos CHAOS_ARGS="--users 20 --faults kill,hang"
# Extra benchmark arguments: make bench BENCH_ARGS="--sections ops --cheap-reps 2000"
# Extra peer arguments: make test-peer PEER_ARGS="--suite django --mode sqlite-tz --apps core"
# Extra nox arguments: make test-matrix NOX_ARGS="-s django6.1-py3.13 -- -x"

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drs-installed
ARTIFACTS ?= test-artifacts
PYTEST_ARGS ?=
CHAOS_ARGS ?=
FUZZ_ARGS ?=
MODEL_EXAMPLES ?= 200
MODEL_STEPS ?= 50
BENCH_ARGS ?=
PEER_ARGS ?=
NOX_ARGS ?=

DRS_TEST_PG_HOST ?= 127.0.0.1
DRS_TEST_PG_PORT ?= 5432
export DRS_TEST_PG_HOST DRS_TEST_PG_PORT

SUITE_SETTINGS := tests.django_suite.settings
ALLAUTH_SETTINGS := tests.allauth.settings

# Chromium driven by Playwright in tests/e2e (Playwright's own browser download is not used).
DRS_CHROMIUM ?= /usr/bin/chromium
export DRS_CHROMIUM

# Exit status 0 when PostgreSQL accepts connections on DRS_TEST_PG_HOST:DRS_TEST_PG_PORT.
PG_READY = if command -v pg_isready >/dev/null 2>&1; then \
		pg_isready -q -t 3 -h "$(DRS_TEST_PG_HOST)" -p "$(DRS_TEST_PG_PORT)"; \
	else \
		$(BIN)/python -c 'import os, socket; socket.create_connection((os.environ["DRS_TEST_PG_HOST"], int(os.environ["DRS_TEST_PG_PORT"])), timeout=3).close()' >/dev/null 2>&1; \
	fi

.PHONY: help venv redis chromium demo lint docs dist messages gettext test test-sqlite \
	test-postgres test-django-suite test-allauth django-suite-fetch test-matrix peer-fetch \
	test-peer bench bench-smoke wrk chaos chaos-cluster fuzz model clean test-adoption

help:
	@awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' Makefile

venv: $(STAMP)

# Re-installs whenever pyproject.toml is newer than the stamp (or the venv is missing).
# The tools are PEP 735 dependency groups of pyproject.toml, which pip reads from 25.1 on.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install -e . --group dev
	@touch $@

redis:
	@if [ -n "$${DRS_REDIS_SERVER:-}" ]; then \
		test -x "$$DRS_REDIS_SERVER" || { echo "error: DRS_REDIS_SERVER=$$DRS_REDIS_SERVER is not executable" >&2; exit 1; }; \
		echo "redis-server: $$DRS_REDIS_SERVER (DRS_REDIS_SERVER)"; exit 0; \
	fi; \
	if ! command -v redis-server >/dev/null 2>&1 \
		&& [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "redis-server not found on PATH; installing it with apt-get"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } \
			|| echo "apt-get could not install redis-server" >&2; \
	fi; \
	if ! command -v redis-server >/dev/null 2>&1; then \
		echo "error: redis-server is not on PATH. The test suite starts private redis-server" >&2; \
		echo "processes and needs the binary. Install it, e.g.:" >&2; \
		echo "  Debian/Ubuntu: sudo apt-get install redis-server" >&2; \
		echo "  Fedora:        sudo dnf install redis   (or valkey)" >&2; \
		echo "  macOS:         brew install redis" >&2; \
		echo "or set DRS_REDIS_SERVER to the path of a redis-server binary." >&2; \
		exit 1; \
	fi; \
	echo "redis-server: $$(command -v redis-server)"

# Installs Debian's chromium when DRS_CHROMIUM is the default path, missing, and we are root
# with apt-get. Without it the browser test is skipped, except under CI where this fails.
chromium:
	@if [ ! -x "$(DRS_CHROMIUM)" ] && [ "$(DRS_CHROMIUM)" = /usr/bin/chromium ] \
		&& [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "$(DRS_CHROMIUM) not found; installing Debian's chromium with apt-get"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
			|| echo "apt-get could not install chromium" >&2; \
	fi; \
	if [ -x "$(DRS_CHROMIUM)" ]; then \
		echo "chromium: $(DRS_CHROMIUM)"; \
	elif [ -n "$${CI:-}" ]; then \
		echo "error: CI is set but $(DRS_CHROMIUM) is missing; the browser test (tests/e2e) needs it." >&2; \
		echo "Install Debian's chromium (apt-get install chromium) or set DRS_CHROMIUM." >&2; \
		exit 1; \
	else \
		echo "warning: $(DRS_CHROMIUM) is missing: the browser test (tests/e2e) will be skipped." >&2; \
		echo "Install Debian's chromium (apt-get install chromium) or set DRS_CHROMIUM." >&2; \
	fi

# The example site with its own redis-server (if installed); Ctrl-C stops everything.
demo: venv
	$(BIN)/python example_project/run_demo.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A full build every time (-E): Sphinx reports a page's warnings only when it reads it.
# -W --keep-going: every warning is an error, all of them listed; -n: every unresolved
# reference too. (The `docs` group, in `dev`; Read the Docs installs it alone.)
docs: venv
	$(BIN)/sphinx-build -E -W --keep-going -n -b html docs docs/_build/html

# The sdist, then the wheel built from it (python -m build), checked as PyPI renders and
# validates them. What the sdist holds is tests/test_packaging.py's business.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# GNU gettext (xgettext, msgmerge, msgfmt) for `make messages`: installed with apt-get when
# missing and we are root.
gettext:
	@if ! command -v msgfmt >/dev/null 2>&1 \
		&& [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "msgfmt not found; installing Debian's gettext with apt-get"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y gettext; } \
			|| echo "apt-get could not install gettext" >&2; \
	fi; \
	command -v msgfmt >/dev/null 2>&1 || { \
		echo "error: GNU gettext is missing (apt-get install gettext, brew install gettext)" >&2; \
		exit 1; }

# Catalogs of every shipped language (en, zh_Hans, fr, de): new strings are added untranslated,
# then everything is compiled. Translate the new msgstr "" entries and run it again.
messages: venv gettext
	cd django_resilient_sessions && $(abspath $(BIN))/django-admin makemessages -a \
		--add-location file --no-obsolete --ignore 'migrations/*'
	cd django_resilient_sessions && $(abspath $(BIN))/django-admin compilemessages

test: venv redis chromium
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory docs
	@$(MAKE) --no-print-directory dist
	@$(MAKE) --no-print-directory test-sqlite
	@if $(PG_READY); then \
		$(MAKE) --no-print-directory test-postgres; \
	elif [ -n "$${CI:-}" ]; then \
		echo "error: CI is set but PostgreSQL does not answer on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT)" >&2; \
		exit 1; \
	else \
		echo "PostgreSQL does not answer on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT): skipping the PostgreSQL run"; \
	fi
	@$(MAKE) --no-print-directory test-adoption
	@$(MAKE) --no-print-directory test-django-suite
	@$(MAKE) --no-print-directory test-allauth
	@$(MAKE) --no-print-directory test-matrix
	@$(MAKE) --no-print-directory test-peer

test-sqlite: venv redis chromium
	@mkdir -p $(ARTIFACTS)
	DRS_TEST_DB=sqlite $(BIN)/pytest --junitxml=$(ARTIFACTS)/junit-sqlite.xml $(PYTEST_ARGS)

test-postgres: venv redis
	@$(PG_READY) || { \
		echo "error: PostgreSQL does not answer on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT)" >&2; \
		exit 1; }
	@mkdir -p $(ARTIFACTS)
	DRS_TEST_DB=postgres $(BIN)/pytest --junitxml=$(ARTIFACTS)/junit-postgres.xml $(PYTEST_ARGS)

# The 100,000-session adoption run (tests/test_adoption_scale.py, marker adoption_scale, kept
# out of the plain pytest runs): on PostgreSQL when it answers, else the cache engine part on
# SQLite.
test-adoption: venv redis
	@mkdir -p $(ARTIFACTS)
	@if $(PG_READY); then db=postgres; else db=sqlite; fi; \
	DRS_TEST_DB=$$db $(BIN)/pytest tests/test_adoption_scale.py -m adoption_scale \
		-p no:cacheprovider --junitxml=$(ARTIFACTS)/junit-adoption.xml $(PYTEST_ARGS)

django-suite-fetch: venv
	$(BIN)/python -m tests.django_suite.fetch

test-django-suite: venv redis django-suite-fetch
	@mkdir -p $(ARTIFACTS)
	DRS_TEST_DB=sqlite DJANGO_SETTINGS_MODULE=$(SUITE_SETTINGS) $(BIN)/pytest tests/django_suite \
		-p no:cacheprovider --junitxml=$(ARTIFACTS)/junit-django-suite.xml $(PYTEST_ARGS)

# The django-allauth site (tests/allauth/, settings of its own) on SQLite, then on PostgreSQL
# when it answers (required under CI).
test-allauth: venv redis
	@mkdir -p $(ARTIFACTS)
	DRS_TEST_DB=sqlite DJANGO_SETTINGS_MODULE=$(ALLAUTH_SETTINGS) $(BIN)/pytest tests/allauth \
		-p no:cacheprovider --junitxml=$(ARTIFACTS)/junit-allauth-sqlite.xml $(PYTEST_ARGS)
	@if $(PG_READY); then \
		echo "DRS_TEST_DB=postgres DJANGO_SETTINGS_MODULE=$(ALLAUTH_SETTINGS) $(BIN)/pytest tests/allauth ..."; \
		DRS_TEST_DB=postgres DJANGO_SETTINGS_MODULE=$(ALLAUTH_SETTINGS) $(BIN)/pytest tests/allauth \
			-p no:cacheprovider --junitxml=$(ARTIFACTS)/junit-allauth-postgres.xml $(PYTEST_ARGS); \
	elif [ -n "$${CI:-}" ]; then \
		echo "error: CI is set but PostgreSQL does not answer on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT)" >&2; \
		exit 1; \
	else \
		echo "PostgreSQL does not answer on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT): skipping the allauth PostgreSQL run"; \
	fi

# The supported matrix (noxfile.py): a virtualenv per session under .nox/ (made by uv,
# from the `matrix` group), SQLite, on the Pythons pyenv or PATH has. Each session runs the
# suite and Django's own session tests of its Django release; JUnit files go to
# $(ARTIFACTS)/nox/.
test-matrix: venv redis
	ARTIFACTS=$(ARTIFACTS) $(BIN)/nox $(NOX_ARGS)

# The peer suites (tests/peer/) in a venv of their own: the main venv's exact versions
# (pip freeze as constraints, so Django is the installed one) plus the suites' test
# requirements (tests/peer/requirements.txt). Their sources come from PyPI sdists.
VENV_PEER ?= .venv-peer
STAMP_PEER := $(VENV_PEER)/.drs-installed

$(STAMP_PEER): pyproject.toml tests/peer/requirements.txt $(STAMP)
	@test -x $(VENV_PEER)/bin/python || $(PYTHON) -m venv $(VENV_PEER)
	$(VENV_PEER)/bin/python -m pip install --upgrade pip
	$(BIN)/python -m pip freeze --exclude-editable > $(VENV_PEER)/constraints.txt
	$(VENV_PEER)/bin/python -m pip install -c $(VENV_PEER)/constraints.txt -e . \
		-r tests/peer/requirements.txt
	@touch $@

peer-fetch: $(STAMP_PEER)
	$(VENV_PEER)/bin/python -m tests.peer.fetch

# Exits 1 when a test fails only with our engine and is not an expected failure (by design),
# or when a run did not complete. Results: $(ARTIFACTS)/peer/ (report.md, summary.json).
test-peer: $(STAMP_PEER) redis peer-fetch
	$(VENV_PEER)/bin/python -m tests.peer --artifacts $(ARTIFACTS)/peer $(PEER_ARGS)

# Installs Debian's wrk when missing and we are root with apt-get; otherwise the benchmarks
# fall back to their own (slower) Python load generator.
wrk:
	@if ! command -v wrk >/dev/null 2>&1 \
		&& [ "$$(id -u 2>/dev/null)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "wrk not found; installing it with apt-get"; \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk; } \
			|| echo "apt-get could not install wrk" >&2; \
	fi; \
	if command -v wrk >/dev/null 2>&1; then \
		echo "wrk: $$(command -v wrk)"; \
	else \
		echo "warning: wrk is missing: the HTTP benchmarks use a Python load generator." >&2; \
	fi

bench: venv redis wrk
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-smoke: venv redis
	$(BIN)/python -m benchmarks --smoke $(BENCH_ARGS)

# The full chaos run (about 3 minutes) against PostgreSQL; exits 1 when an invariant breaks.
# Then the model-based test at length, on PostgreSQL too.
chaos: venv redis
	@$(PG_READY) || { \
		echo "error: make chaos needs PostgreSQL on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT)" \
			"(or run: $(BIN)/python -m chaos --db sqlite)" >&2; \
		exit 1; }
	$(BIN)/python -m chaos run --db postgres $(CHAOS_ARGS)
	DRS_TEST_DB=postgres $(MAKE) --no-print-directory model

# The model-based test (tests/test_model.py) with large bounds and a random seed; a
# failure prints the shortest sequence found and a @reproduce_failure line to replay it.
model: venv redis
	DRS_MODEL_EXAMPLES=$(MODEL_EXAMPLES) DRS_MODEL_STEPS=$(MODEL_STEPS) DRS_MODEL_RANDOM=1 \
		$(BIN)/pytest tests/test_model.py -p no:cacheprovider -s $(PYTEST_ARGS)

# The chaos run against a private Redis Cluster (about 4 minutes) against PostgreSQL.
chaos-cluster: venv redis
	@$(PG_READY) || { \
		echo "error: make chaos-cluster needs PostgreSQL on $(DRS_TEST_PG_HOST):$(DRS_TEST_PG_PORT)" \
			"(or run: $(BIN)/python -m chaos cluster --db sqlite)" >&2; \
		exit 1; }
	$(BIN)/python -m chaos cluster --db postgres $(CHAOS_ARGS)

# The full HTTP fuzz of the session and backup cookies (PostgreSQL when reachable).
fuzz: venv redis
	$(BIN)/python -m chaos fuzz --db auto $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) $(VENV_PEER) .nox build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		$(ARTIFACTS) .cache example_project/demo.sqlite3 docs/_build
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
