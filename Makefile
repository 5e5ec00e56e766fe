# perp-relayer. `make help` explains every target. Everything installs itself: a fresh Debian machine with
# Python 3.11, Node 20 (npm), gcc and the GMP headers needs nothing else (as root, missing system packages are
# installed with apt-get).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
CONFIG ?= config.json
PYTEST_ARGS ?=
# pip here may print one warning per package about local index locations that do not exist; hide just those.
PIP_QUIET := 2> >(grep -v "^WARNING: Location 'file:" >&2)

BENCHES := $(patsubst benchmarks/bench_%.py,%,$(wildcard benchmarks/bench_*.py))

.PHONY: help install system-deps test-system-deps build container lint fmt test run devnet abis bindings check-generated bench \
        $(addprefix bench-,$(BENCHES)) soak docs lock clean distclean

help: ## Show every target with what it does.
	@echo "perp-relayer: make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_%$$(), -]+:.*## / {name = $$1; if (name ~ /addprefix bench-/) name = "bench-NAME"; \
	  printf "  %-17s %s\n", name, $$2}' $(MAKEFILE_LIST)
	@echo "Benchmarks: $(addprefix bench-,$(BENCHES))"

system-deps: ## Make sure the GMP headers are present (libp2p's fastecdsa compiles against them); apt-get as root.
	@if echo '#include <gmp.h>' | $${CC:-cc} -E -x c - >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "install: GMP headers missing; installing libgmp-dev with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev >/dev/null; \
	else \
	  echo "install: the GMP headers (gmp.h) are missing: libp2p's fastecdsa cannot compile." >&2; \
	  echo "         On Debian/Ubuntu run: sudo apt-get install libgmp-dev   (then make install again)" >&2; exit 1; \
	fi
	@command -v npm >/dev/null || { echo "install: npm (Node 20) is missing: install nodejs and npm" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null || \
	  { echo "install: $(PYTHON) is not Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

$(STAMP): pyproject.toml requirements/dev.lock
	@$(MAKE) --no-print-directory system-deps
	@echo "install: Python virtualenv in $(VENV) from requirements/dev.lock"
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip $(PIP_QUIET)
	@$(PY) -m pip install -q -r requirements/dev.lock $(PIP_QUIET)
	@$(PY) -m pip install --no-deps -e . > $(VENV)/install-editable.log 2>&1 || \
	  { cat $(VENV)/install-editable.log >&2; exit 1; }
	@$(PY) -c 'import coincurve, plyvel, libp2p, eth_keys.backends as b; \
	  assert type(b.get_backend()).__name__ == "CoinCurveECCBackend", "eth-keys is not using coincurve"'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	@echo "install: anvil and solc-js from package-lock.json (npm ci --ignore-scripts)"
	@npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) $(NPM_STAMP) ## Set up .venv (pinned Python deps) and node_modules (anvil, solc-js); quick when nothing changed.

test-system-deps: ## As root, install buildah and debootstrap for the container test (else the test says what is missing).
	@if command -v buildah >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test: installing buildah and debootstrap (container test) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; \
	else echo "test: buildah/debootstrap missing and not root: the container test will be skipped" >&2; fi

test: install test-system-deps ## Install what is needed, then run every test; fails on any skip not in tests/skip_allowlist.txt.
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff (lint + format check), mypy --strict on relayer/ and bindings/, hadolint on the Dockerfile.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

fmt: install ## Reformat the code with ruff and apply its safe fixes.
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

build: install ## Build out/bin/relayer: a single-file executable (shiv zipapp) that needs only Python 3.11 to run.
	@mkdir -p out/bin
	@echo "build: out/bin/relayer (shiv zipapp from requirements/runtime.lock)"
	@$(BIN)/shiv -c relayer -o out/bin/relayer --python '/usr/bin/env python3.11' --reproducible \
	  -r requirements/runtime.lock --no-deps . > out/build.log 2>&1 || { cat out/build.log >&2; exit 1; }
	@out/bin/relayer --version
	@ls -l out/bin/relayer

container: ## Build the image relayers:latest (docker if an engine runs, else buildah on a debootstrapped base; BASE_IMAGE=... sets the base).
	bash scripts/container.sh

run: install ## Run a node from ./config.json (CONFIG=path to use another).
	$(BIN)/relayer run --config $(CONFIG)

devnet: install ## Local chain + contracts + a multi-node relayer network with live order flow (arrives with issue #8).
	$(BIN)/relayer devnet

abis: install ## Compile contracts/ with the pinned solc-js into abis/ (deterministic; stale artifacts removed).
	$(PY) -m relayer.codegen.compile --contracts contracts --out abis

bindings: install ## Generate typed Python bindings in bindings/ from abis/ (never edited by hand; CI diffs them).
	$(PY) -m relayer.codegen.abigen --abis abis --out bindings

check-generated: abis bindings ## Recompile abis/ and regenerate bindings/, and fail if either differs from what is committed.
	@git diff --exit-code --stat -- abis bindings || \
	  { echo "abis/ or bindings/ are stale: run make abis bindings and commit the result" >&2; exit 1; }
	@untracked=$$(git status --porcelain -- abis bindings); [ -z "$$untracked" ] || \
	  { echo "untracked generated files: $$untracked" >&2; exit 1; }

bench: install ## Run every benchmark; each writes out/bench/NAME.json and prints its figures.
	@for b in $(BENCHES); do $(PY) -m benchmarks.run $$b; done

$(addprefix bench-,$(BENCHES)): bench-%: install ## Run one benchmark, e.g. make bench-gas (gas per fill on anvil).
	$(PY) -m benchmarks.run $*

soak: install ## 10-minute steady load with faults (arrives with the cluster issue, #9).
	@echo "make soak: the cluster harness and soak run arrive with issue #9" >&2; exit 3

docs: install ## Regenerate docs/config.md and config.example.json from the config schema (tests check they match).
	$(BIN)/relayer config docs > docs/config.md
	$(BIN)/relayer config example > config.example.json

lock: ## Re-resolve requirements/*.lock from pyproject.toml in fresh virtualenvs (then review the diff).
	bash scripts/lock.sh

clean: ## Remove build outputs, caches and benchmark results (keeps .venv and node_modules).
	rm -rf out build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -not -path './.venv/*' -not -path './node_modules/*' -prune -exec rm -rf {} +

distclean: clean ## Also remove .venv and node_modules.
	rm -rf $(VENV) node_modules
