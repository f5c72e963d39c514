# Day-to-day commands; every target runs inside the poetry-managed virtualenv.
# poetry from PATH, else the one `make install` puts in this Python.
POETRY ?= $(shell command -v poetry 2>/dev/null || echo python3 -m poetry)
RUN := $(POETRY) run
PIDFILE ?= data/snapshot-processor.pid
LOGFILE ?= data/snapshot-processor.log
RUND_CHECK_SECONDS ?= 2
# `make setup`: where docker-compose.yml, .env, data/ and secrets/ go; FORCE=1 rewrites
# the two files (keeping .env's values); FTP_MASQUERADE_ADDRESS overrides the LAN address found.
SETUP_DIR ?= .
FORCE ?=
FTP_MASQUERADE_ADDRESS ?=
IMAGE ?= snapshot-processor:latest
EXTRAS ?=
# The engine that builds the image: Docker when its daemon answers, else podman.
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || { command -v podman >/dev/null 2>&1 && echo podman || echo docker; })
# Compose v2 (a docker plugin) where there is one, else Debian's docker-compose 1.29.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: install run rund stop test test-unit lint check-config bench bench-http setup build image-test up down demo cluster-demo docs

install:  ## (poetry if missing,) .venv with the project, its extras (stream, local) and dev tools from poetry.lock
	command -v poetry >/dev/null 2>&1 || python3 -m poetry --version >/dev/null 2>&1 || python3 -m pip install "poetry>=2,<3"
	$(POETRY) config --local virtualenvs.in-project true
	$(POETRY) install --no-interaction --all-extras

run:  ## run the daemon in the foreground (Ctrl-C stops it)
	$(RUN) snapshot-processor run

rund:  ## run the daemon in the background; logs to $(LOGFILE), `make stop` ends it
	@mkdir -p $(dir $(PIDFILE)) $(dir $(LOGFILE)) && touch $(LOGFILE)
	@# A daemon that ends within its first seconds failed to start (a second one on the
	@# same data root, a port in use, bad settings): say so, and keep the pid file of
	@# the one that runs. Why it stopped is on a main-thread line; other threads' lines
	@# are left out, as they may be another daemon's writing to the same log.
	@start=$$(wc -c <$(LOGFILE) 2>/dev/null || echo 0); \
	nohup $(RUN) snapshot-processor run >>$(LOGFILE) 2>&1 & pid=$$!; \
	sleep $(RUND_CHECK_SECONDS); \
	if kill -0 $$pid 2>/dev/null; then \
		echo $$pid >$(PIDFILE); echo "started, pid $$pid, log $(LOGFILE)"; \
	else \
		echo "the daemon stopped at start; its log:" >&2; \
		tail -c +$$((start + 1)) $(LOGFILE) | grep -v '^[0-9-]* [0-9:,]* [A-Z]* *\[[^M]' \
			| tail -n 20 >&2; exit 1; \
	fi

stop:  ## stop the daemon started by `make rund`
	kill -TERM $$(cat $(PIDFILE)) && rm -f $(PIDFILE)

check-config:  ## validate the configuration
	$(RUN) snapshot-processor check-config

test:  ## the whole suite but the image's (needs RabbitMQ on 127.0.0.1:5672)
	$(RUN) pytest -m "not image"

test-unit:  ## only the tests that need no broker
	$(RUN) pytest -m "not broker"

bench:  ## the daemon against the raw and durable floors, its RTSP cameras, its evidence bundles (S3 on loopback), Home Assistant over MQTT (Mosquitto on loopback), the detection chain and two daemons on one queue; report in data/bench/ (needs RabbitMQ)
	$(RUN) python -m tools.bench --out data/bench

bench-http:  ## the health check under 500 trickling clients (needs RabbitMQ)
	$(RUN) python -m tools.http_siege --clients 500 --seconds 30

setup:  ## docker-compose.yml and .env (generated passwords, mode 0600) from the template; data/ for uid 1000
	python3 -m tools.compose_setup --dir $(SETUP_DIR) $(if $(filter 1 yes true,$(FORCE)),--force) \
		$(if $(FTP_MASQUERADE_ADDRESS),--masquerade $(FTP_MASQUERADE_ADDRESS))

build:  ## the image, $(IMAGE), with docker or podman (EXTRAS=local adds the local detector)
	@# podman's default OCI format would drop the HEALTHCHECK.
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) -t $(IMAGE) \
		$(if $(EXTRAS),--build-arg "EXTRAS=$(EXTRAS)") .

image-test:  ## build the image (on a local stand-in base where no registry answers) and run it against RabbitMQ and a simulated camera
	$(RUN) python -m tools.image_test --engine $(ENGINE) --image $(IMAGE)

up:  ## start RabbitMQ and the daemon in the background (docker compose, in SETUP_DIR), show their state
	@test -f $(SETUP_DIR)/docker-compose.yml || { echo "no $(SETUP_DIR)/docker-compose.yml: run make setup first" >&2; exit 2; }
	cd $(SETUP_DIR) && $(COMPOSE) up -d && $(COMPOSE) ps

down:  ## stop and remove the containers (RabbitMQ's volume and data/ stay)
	cd $(SETUP_DIR) && $(COMPOSE) down

cluster-demo:  ## two daemons and two detection workers on a three-node RabbitMQ cluster on loopback; two nodes stopped mid-stream; ends 0 when nothing was lost (about 2 minutes)
	$(RUN) python -m tools.cluster_demo $(CLUSTER_DEMO_ARGS)

demo:  ## the whole chain in about ten seconds: simulated cameras, the daemon, events (needs RabbitMQ); KEEP=1 keeps it up until Ctrl-C
	$(RUN) python -m tools.demo $(if $(filter 1 yes true,$(KEEP)),--keep) $(DEMO_ARGS)

docs:  ## docs/configuration.md from the settings models and the example file's comments
	$(RUN) python -m tools.settings_doc

lint:  ## ruff, mypy (as configured in pyproject.toml) and hadolint
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) hadolint Dockerfile
