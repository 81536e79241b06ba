# taskring: build, run and test on a Debian machine.
#
#   make run     the whole system on this machine (`taskring up`); ARGS="..." adds flags
#   make test    lint, then the whole test suite (.ci/run calls exactly this)
#   make test-fast   lint, then the in-process tests: no broker, browser or sweep (< 1 min)
#   make fuzz    coverage-guided fuzzing (atheris) of what reads untrusted bytes; FUZZ_SECONDS=60
#   make lint    ruff check, ruff format --check, typecheck and importlint
#   make typecheck   mypy over backend, web and tests (strict for the pure cores)
#   make importlint  the import contracts: pure cores import no I/O or adapters
#   make fmt     ruff format and the fixes ruff check can make
#   make proto   regenerate backend/admin_pb from protos/
#   make frontend   build the browser UI into frontend/dist (only when stale)
#   make clean   remove the virtual environment and caches (keeps ./data)
#
# The virtual environment is (re)installed whenever pyproject.toml changes.
# Debian packages (mosquitto for the tests, python3-venv if missing) are
# installed with apt-get when running as root; otherwise we say what to install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-pyproject
APT_STAMP := /tmp/taskring-apt-lists-updated
ARGS ?=
FRONTEND := frontend
DIST := $(FRONTEND)/dist/index.html
NPM_STAMP := $(FRONTEND)/node_modules/.installed-from-lockfile
# Everything the built UI depends on; generated code (src/gen) is an output, not an input.
FRONTEND_INPUTS := $(shell find $(FRONTEND)/src -type f -not -path '$(FRONTEND)/src/gen/*' 2>/dev/null) \
	$(FRONTEND)/index.html $(FRONTEND)/vite.config.ts $(FRONTEND)/tsconfig.json \
	$(FRONTEND)/buf.gen.yaml $(shell find protos -name '*.proto')
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.DEFAULT_GOAL := help
.PHONY: help run test test-fast fuzz lint typecheck importlint fmt proto clean check-python mosquitto frontend chromium check-node redis etcd nats nftables rabbitmq test-rabbitmq

help:
	@sed -n '3,14p' Makefile | sed 's/^# \{0,1\}//'

# $(call apt_install,package): install a Debian package, refreshing the package lists
# at most every six hours.
define apt_install
	if [ "$$(id -u)" != 0 ]; then \
		echo "error: the Debian package '$(1)' is needed; install it with: sudo apt-get install -y $(1)" >&2; \
		exit 1; \
	fi; \
	if [ -z "$$(find $(APT_STAMP) -mmin -360 2>/dev/null)" ]; then \
		apt-get update -qq && touch $(APT_STAMP); \
	fi; \
	echo "installing the Debian package $(1)"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null
endef

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
		echo "error: $(PYTHON) not found; taskring needs Python 3.11 or newer" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: taskring needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; \
		exit 1; }

$(STAMP): pyproject.toml | check-python
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(call apt_install,python3-venv); }
	@[ -x $(BIN)/python ] || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing taskring and its dependencies into $(VENV)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { $(call apt_install,mosquitto); }

check-node:
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "error: the browser UI needs Node.js 20.19 or newer with npm (https://nodejs.org)" >&2; exit 1; }
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || { \
		echo "error: the browser UI needs Node.js 20.19 or newer; this is $$(node --version)" >&2; exit 1; }

$(NPM_STAMP): $(FRONTEND)/package.json $(FRONTEND)/package-lock.json | check-node
	@echo "installing the frontend's npm packages"
	@cd $(FRONTEND) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(DIST): $(NPM_STAMP) $(FRONTEND_INPUTS)
	@echo "building the browser UI"
	@cd $(FRONTEND) && npm run --silent build
	@touch $@

frontend: $(DIST)

# Redis and etcd are the peers `taskring bench --compare` measures against; its smoke
# test drives both, so neither driver can rot.
redis:
	@command -v redis-server >/dev/null 2>&1 || { $(call apt_install,redis-server); }

etcd:
	@command -v etcd >/dev/null 2>&1 || { $(call apt_install,etcd-server); }

# `taskring broker cluster` runs NATS servers as a clustered broker; its end-to-end test
# starts three (Debian puts nats-server in /usr/sbin).
nats:
	@command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || { $(call apt_install,nats-server); }

# `taskring broker cluster --kind rabbitmq` runs RabbitMQ nodes (with their MQTT plugin).
rabbitmq:
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || { $(call apt_install,rabbitmq-server); }

# Three RabbitMQ nodes (Erlang VMs) take a minute or more to boot on two cores, beyond
# CI's budget, so their end-to-end test is not in `make test` (it skips it, saying so).
test-rabbitmq: $(STAMP) rabbitmq
	TASKRING_RABBITMQ_TESTS=1 $(BIN)/pytest tests/e2e/test_rabbitmq_cluster.py -v

# `taskring chaos` cuts a process off the broker with nftables and delays its connection
# with tc (iproute2); without them those faults are skipped, saying why.
nftables:
	@command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || { $(call apt_install,nftables); }
	@command -v tc >/dev/null 2>&1 || [ -x /usr/sbin/tc ] || { $(call apt_install,iproute2); }

chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { $(call apt_install,chromium); }

run: $(STAMP) $(DIST)
	$(BIN)/taskring up $(ARGS)

test: lint mosquitto chromium redis etcd nats nftables $(DIST)
	$(BIN)/pytest

# The edit-test loop: no Mosquitto, processes, browser or simulator sweeps, and none of
# the in-process tests that take over a second (markers: see pyproject.toml), so it needs
# nothing but the virtual environment. `make test` still runs all of them.
FAST_TESTS := not e2e and not sim and not browser and not slow

test-fast: lint
	$(BIN)/pytest -m "$(FAST_TESTS)"

# Coverage-guided, for as long as FUZZ_SECONDS; the seeded fuzz tests run in `make test`.
# Inputs that crash a target land in test-artifacts/fuzz/ (replay: python <harness> <file>).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check atheris
	@mkdir -p test-artifacts/fuzz/corpus
	$(BIN)/python tests/fuzz/coverage_guided.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 \
		-artifact_prefix=test-artifacts/fuzz/ test-artifacts/fuzz/corpus

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(MAKE) --no-print-directory typecheck importlint

# Configured in pyproject.toml ([tool.mypy]); its cache makes a re-run take seconds.
typecheck: $(STAMP)
	$(BIN)/mypy

# Configured in pyproject.toml ([tool.importlinter]).
importlint: $(STAMP)
	$(BIN)/lint-imports

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(STAMP)
	$(BIN)/python -m backend.admin_pb.generate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info build dist
	rm -rf $(FRONTEND)/dist $(FRONTEND)/src/gen
	find . -name __pycache__ -type d -prune -not -path './frontend/node_modules/*' -exec rm -rf {} +
