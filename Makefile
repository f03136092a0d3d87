# opsq's front door. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
VAR      ?= var
FLEET_DIR ?= $(VAR)/fleet
N        ?= 5
CONCURRENCY ?= 64

# The fleet, the demo and the example tasks live in devtools/, outside the opsq package
# (and its wheel): every target runs with the repository root importable, so workers
# started here can load OPSQ_TASK_MODULES=devtools.examples.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

# Use the local fleet's inventory and host keys when it exists and nothing else is set.
ifneq ($(wildcard $(FLEET_DIR)/inventory.yml),)
export OPSQ_INVENTORY ?= $(abspath $(FLEET_DIR)/inventory.yml)
export OPSQ_KNOWN_HOSTS ?= $(abspath $(FLEET_DIR)/known_hosts)
endif
ifneq ($(wildcard $(FLEET_DIR)/become-password),)
export OPSQ_BECOME_PASSWORD_FILE ?= $(abspath $(FLEET_DIR)/become-password)
endif

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,flower,web]'
	touch $@

.PHONY: venv
venv: $(STAMP)  ## create .venv and install opsq with its dependencies

.PHONY: services
services:  ## start PostgreSQL and RabbitMQ if down; install openssh-server if missing
	@bash deploy/ensure-services.sh

.PHONY: db
db: venv services  ## create the database and apply the migrations
	$(BIN)/opsq db upgrade

.PHONY: fleet-up
fleet-up: venv services  ## start a local fleet of N sshd hosts on 127.0.1.K (N=5)
	$(BIN)/python -m devtools.devfleet up --dir $(FLEET_DIR) -n $(N)

.PHONY: fleet-down
fleet-down: venv  ## stop the local fleet
	$(BIN)/python -m devtools.devfleet down --dir $(FLEET_DIR)

.PHONY: worker
worker: venv  ## run a worker in the foreground (both queues, threads pool); SITE=eu: only the hosts of site eu
ifeq ($(SITE),)
	$(MAKE) db
	$(BIN)/celery -A opsq worker -l INFO -P threads -c $(CONCURRENCY) -Q opsq.fleet,opsq.control,celery
else
	$(BIN)/python -c 'import sys; from opsq.inventory.hosts import check_site; check_site(sys.argv[1], "SITE")' '$(SITE)'
	$(BIN)/celery -A opsq worker -l INFO -P threads -c $(CONCURRENCY) -Q opsq.fleet.$(SITE) -n fleet-$(SITE)@%h
endif

.PHONY: start
start: db  ## start the worker daemons (celery multi: fleet + control nodes) and beat
	$(BIN)/opsq daemons start

.PHONY: stop
stop: venv  ## stop the daemons after their running tasks finish
	$(BIN)/opsq daemons stop

.PHONY: restart
restart: db  ## restart the daemons (warm: running tasks finish first)
	$(BIN)/opsq daemons restart

.PHONY: status
status: venv  ## each daemon's pid and whether it answers a ping
	$(BIN)/opsq daemons status

.PHONY: beat
beat: db  ## run celery beat in the foreground (fires the schedules in PostgreSQL)
	$(BIN)/celery -A opsq beat -l INFO

.PHONY: flower
flower: venv  ## Flower on 127.0.0.1:5555; needs OPSQ_FLOWER_USER and OPSQ_FLOWER_PASSWORD
	$(BIN)/opsq flower

.PHONY: web
web: db  ## web console + REST API on 127.0.0.1:8000 (create a user first: opsq users add)
	$(BIN)/opsq web

.PHONY: screenshot
screenshot: venv  ## Flower's task list with a fresh job, as var/flower-tasks.png (needs make start)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/python -m tests.screenshot

.PHONY: run
# CMD and TARGET reach opsq exactly as typed: make would expand `$HOME` in them (to
# "OME") and the shell would run `backticks` on this machine. $(value ...) takes them
# unexpanded, and the environment carries them past the shell.
export OPSQ_MAKE_CMD := $(value CMD)
export OPSQ_MAKE_TARGET := $(value TARGET)
export OPSQ_MAKE_SRC := $(value SRC)
export OPSQ_MAKE_DEST := $(value DEST)
# Options every fleet target takes: WAIT=1, BECOME=1 (sudo, as root or BECOME_USER).
JOB_FLAGS = $(if $(WAIT),--wait) $(if $(BECOME),--become) \
	$(if $(BECOME_USER),--become-user "$(BECOME_USER)")
run: venv  ## run CMD on TARGET: make run CMD='uptime' TARGET='fleet:!host03' [WAIT=1] [BECOME=1]
	@test -n "$$OPSQ_MAKE_CMD" -a -n "$$OPSQ_MAKE_TARGET" || { echo "usage: make run CMD='uptime' TARGET='pattern' [WAIT=1] [BECOME=1]"; exit 2; }
	@$(BIN)/opsq run "$$OPSQ_MAKE_CMD" -t "$$OPSQ_MAKE_TARGET" $(JOB_FLAGS)

.PHONY: put get script
put: venv  ## copy SRC to DEST on TARGET: make put SRC=app.conf DEST=/etc/app.conf TARGET=web [MODE=0644] [OWNER=root] [BECOME=1]
	@test -n "$$OPSQ_MAKE_SRC" -a -n "$$OPSQ_MAKE_DEST" -a -n "$$OPSQ_MAKE_TARGET" || { echo "usage: make put SRC=local DEST=/remote/path TARGET='pattern' [MODE=0644] [OWNER=user[:group]] [BECOME=1] [WAIT=1]"; exit 2; }
	@$(BIN)/opsq put "$$OPSQ_MAKE_SRC" "$$OPSQ_MAKE_DEST" -t "$$OPSQ_MAKE_TARGET" $(JOB_FLAGS) \
		$(if $(MODE),--mode "$(MODE)") $(if $(OWNER),--owner "$(OWNER)")
get: venv  ## fetch SRC from TARGET into DEST/<host>/: make get SRC=/var/log/syslog DEST=fetched TARGET=web
	@test -n "$$OPSQ_MAKE_SRC" -a -n "$$OPSQ_MAKE_DEST" -a -n "$$OPSQ_MAKE_TARGET" || { echo "usage: make get SRC=/remote/path DEST=local-dir TARGET='pattern' [BECOME=1]"; exit 2; }
	@$(BIN)/opsq get "$$OPSQ_MAKE_SRC" "$$OPSQ_MAKE_DEST" -t "$$OPSQ_MAKE_TARGET" --wait \
		$(if $(BECOME),--become) $(if $(BECOME_USER),--become-user "$(BECOME_USER)")
script: venv  ## run the local script SRC on TARGET: make script SRC=check.sh TARGET=web [WAIT=1] [BECOME=1]
	@test -n "$$OPSQ_MAKE_SRC" -a -n "$$OPSQ_MAKE_TARGET" || { echo "usage: make script SRC=local-script TARGET='pattern' [WAIT=1] [BECOME=1]"; exit 2; }
	@$(BIN)/opsq script "$$OPSQ_MAKE_SRC" -t "$$OPSQ_MAKE_TARGET" $(JOB_FLAGS)

.PHONY: result
result: venv  ## show a job's results: make result JOB=<id>
	@test -n "$(JOB)" || { echo "usage: make result JOB=<job id>"; exit 2; }
	$(BIN)/opsq result "$(JOB)" --wait

.PHONY: jobs
jobs: venv  ## recent jobs
	$(BIN)/opsq jobs

.PHONY: demo
demo: db  ## everything from scratch, then one real job across the local fleet
	$(MAKE) --no-print-directory fleet-up N=$(N)
	$(MAKE) --no-print-directory start
	$(MAKE) --no-print-directory demo-job

.PHONY: demo-job
demo-job: venv  # (a sub-make, so it sees the inventory fleet-up just wrote)
	$(BIN)/python -m devtools.demo

.PHONY: test
test: venv services  ## the whole suite, against real RabbitMQ, PostgreSQL, workers and sshd
	$(BIN)/pytest -q

.PHONY: test-cluster
test-cluster: venv services  ## the broker cluster test alone (three RabbitMQ nodes; also part of make test)
	$(BIN)/pytest -q tests/integration/test_broker_cluster.py

.PHONY: test-fast
test-fast: venv  ## tests/unit: the tests that need no service (inventory, patterns, options, local runner...)
	$(BIN)/pytest -q tests/unit

.PHONY: bench
bench: venv services  ## benchmark: opsq jobs vs. what their parts allow, same run, as ratios
	$(BIN)/python -m tests.bench

SECONDS ?= 3600
.PHONY: soak
soak: venv services  ## steady load for SECONDS (3600): fails if the fleet worker's memory grows over 10 %
	SOAK_SECONDS=$(SECONDS) $(BIN)/python -m tests.soak

.PHONY: lint
lint: venv
	$(BIN)/ruff check opsq tests devtools
