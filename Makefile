# The two commands: `make run` (poold in front of a throwaway PostgreSQL) and
# `make test` (every test tier). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test unit integration e2e lint bench bench-quick bench-cpu bench-login venv clean install uninstall

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py daemon/poold/protocol/_framing.c daemon/poold/protocol/framing_capi.h daemon/poold/_relaycore.c \
		daemon/poold/protocol/scram_core.c daemon/poold/protocol/scram_core.h daemon/poold/_sockio.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: venv
	$(BIN)/python scripts/run_dev.py

test: venv
	$(BIN)/python scripts/pgcluster.py
	$(BIN)/python scripts/pgbouncer_ref.py
	$(BIN)/python -m pytest tests

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv
	$(BIN)/python -m pytest tests/integration

e2e: venv
	$(BIN)/python -m pytest tests/e2e

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py

bench-quick: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --quick

bench-cpu: venv
	$(BIN)/python bench/cpu_split.py

bench-login: venv
	$(BIN)/python bench/login_cost.py

lint: venv
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/ruff check daemon ctl tests scripts bench
	$(BIN)/mypy daemon/poold ctl/poolctl
	$(BIN)/mypy bench

clean:
	rm -rf $(VENV) build *.egg-info daemon/*.egg-info ctl/*.egg-info

# Install as a systemd service (root): a virtualenv under PREFIX (/opt/poold), poold and
# poolctl in BINDIR (/usr/bin), the units, the poold user (sysusers.d), the man page, and
# /etc/poold/{poold.toml,userlist.txt,poold.env} where absent. Every path can be given:
# make install PREFIX=... BINDIR=... UNITDIR=... SYSUSERSDIR=... MANDIR=... SYSCONFDIR=...
install:
	$(PYTHON) scripts/install.py install

# Removes what install put, but /etc/poold (your configuration and secrets).
uninstall:
	$(PYTHON) scripts/install.py uninstall
