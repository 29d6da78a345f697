# The two commands: `make run` (poold in front of a throwaway PostgreSQL) and
# `make test` (every test tier). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test unit integration e2e lint bench bench-quick bench-large bench-cpu bench-cpu-tls bench-login venv clean install uninstall test-sanitize test-server-tls

SOURCES := pyproject.toml setup.py daemon/poold/protocol/_framing.c daemon/poold/protocol/framing_capi.h daemon/poold/_relaycore.c \
	daemon/poold/protocol/scram_core.c daemon/poold/protocol/scram_core.h daemon/poold/_sockio.c

venv: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: venv
	$(BIN)/python scripts/run_dev.py

# Debian's exporter for PgBouncer, which tests/e2e/test_admin_console.py points at poold:
# installed with apt-get when we are root (.ci/run does the same); else that test says what to install.
EXPORTER := /usr/bin/prometheus-pgbouncer-exporter

$(EXPORTER):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pgbouncer-exporter >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pgbouncer-exporter >/dev/null; }; \
	else echo "missing: prometheus-pgbouncer-exporter (apt-get install prometheus-pgbouncer-exporter)" >&2; fi

test: venv $(EXPORTER)
	$(BIN)/python scripts/pgcluster.py
	$(BIN)/python scripts/pgbouncer_ref.py
	$(BIN)/python scripts/node_pg.py
	$(BIN)/python scripts/pg_npm.py
	$(BIN)/python -m pytest tests
	$(MAKE) test-server-tls

# The relay's tiers again through TLS server legs: the session's cluster speaks TLS
# and every poold DSN says sslmode=verify-full (tests/conftest.py, SERVER_TLS): every
# test file whose clients go through a server leg (the others test logins, the
# control socket, HTTP, systemd, docs and config). tests/e2e/test_server_tls.py (in
# `pytest tests`) covers what only TLS has.
SERVER_TLS_TESTS = tests/integration tests/e2e/test_psql.py tests/e2e/test_psycopg.py tests/e2e/test_pgbench.py \
	tests/e2e/test_cancel.py tests/e2e/test_timeouts.py tests/e2e/test_database_outage.py \
	tests/e2e/test_reload_under_load.py tests/e2e/test_integrity.py tests/e2e/test_prepared.py \
	tests/e2e/test_settings.py tests/e2e/test_drivers.py tests/e2e/test_parameters.py tests/e2e/test_shutdown.py \
	tests/e2e/test_pool_failures.py tests/e2e/test_pool_limits.py tests/e2e/test_idle_timeout.py \
	tests/e2e/test_hostile_input.py tests/e2e/test_status_truth.py tests/e2e/test_admin_console.py
test-server-tls: venv
	POOLD_TEST_SERVER_TLS=1 $(BIN)/python -m pytest $(SERVER_TLS_TESTS)

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv
	$(BIN)/python -m pytest tests/integration

e2e: venv $(EXPORTER)
	$(BIN)/python -m pytest tests/e2e

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py

bench-quick: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --quick

bench-large: venv
	$(BIN)/python bench/run.py --large

bench-cpu: venv
	$(BIN)/python bench/cpu_split.py

bench-cpu-tls: venv
	$(BIN)/python bench/cpu_split.py --server-tls

bench-login: venv
	$(BIN)/python bench/login_cost.py

lint: venv
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/ruff check daemon ctl tests scripts bench
	$(BIN)/mypy daemon/poold ctl/poolctl
	$(BIN)/mypy bench

# The three C extensions built with AddressSanitizer and UBSan (setup.py,
# POOLD_SANITIZE) into their own virtual environment (installed, not editable: the
# plain build in the source tree stays the plain one), and the unit and e2e tiers
# run against them. The Python interpreter is not instrumented: the sanitizer
# runtimes are preloaded (tests/conftest.py passes them on to poold alone, not to
# PostgreSQL), and every Python allocation goes through malloc so that ASan sees the
# objects the C code reads and writes. A report stops the process; tests/conftest.py
# fails a test whose poold logged one.
SAN_VENV  := .venv-sanitize
SAN_BIN   := $(SAN_VENV)/bin
SAN_ENV    = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	PYTHONMALLOC=malloc \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

$(SAN_VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(SAN_VENV)
	$(SAN_BIN)/pip install --quiet --upgrade pip
	$(SAN_BIN)/pip install --quiet '.[test]'
	rm -rf build  # no object of another build is reused
	POOLD_SANITIZE=address,undefined $(SAN_BIN)/pip install --quiet --force-reinstall --no-deps .
	rm -rf build
	for so in $$($(SAN_ENV) $(SAN_BIN)/python -c "import poold._relaycore as r, poold._sockio as s, \
			poold.protocol._framing as f; print(r.__file__, s.__file__, f.__file__)"); do \
		grep -q __asan_report $$so || { echo "$$so: not built with AddressSanitizer" >&2; exit 1; }; \
	done
	touch $@

test-sanitize: $(SAN_VENV)/.installed $(EXPORTER)
	$(SAN_BIN)/python scripts/pgcluster.py
	$(SAN_ENV) $(SAN_BIN)/python -m pytest -p no:cacheprovider -m "not rss" tests/unit tests/e2e

clean:
	rm -rf $(VENV) $(SAN_VENV) build *.egg-info daemon/*.egg-info ctl/*.egg-info

# Install as a systemd service (root): a virtualenv under PREFIX (/opt/poold), poold and
# poolctl in BINDIR (/usr/bin), the units, the poold user (sysusers.d), the man page, and
# /etc/poold/{poold.toml,userlist.txt,poold.env} where absent. Every path can be given:
# make install PREFIX=... BINDIR=... UNITDIR=... SYSUSERSDIR=... MANDIR=... SYSCONFDIR=...
install:
	$(PYTHON) scripts/install.py install

# Removes what install put, but /etc/poold (your configuration and secrets).
uninstall:
	$(PYTHON) scripts/install.py uninstall
