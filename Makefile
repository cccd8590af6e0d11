# SOPPU developer entry points. `make demo` and `make test` are the two commands a newcomer needs;
# both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOPPU := $(VENV)/bin/soppu
TORCH_VERSION := 2.13.0
LORAX_CLIENT_VERSION := 0.6.3
EXAMPLES_DIR ?= .cache/examples
# Tests and the demo share one cache of generated models (see soppu examples build --help).
export SOPPU_CACHE_DIR ?= $(CURDIR)/.cache/soppu
DEMO_USERS ?= 20

.PHONY: install test demo lint format bench up down clean

# The stamp is rebuilt only when pyproject.toml changes, so a repeat `make install` takes no time.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test]'
	# The official LoRAX client, which the tests drive our services with. Its metadata pins
	# huggingface-hub<1 and an old certifi that it never imports; honouring them would downgrade
	# transformers, so it goes in without them (its real imports are in the test extras).
	$(PY) -m pip install --quiet --no-deps lorax-client==$(LORAX_CLIENT_VERSION)
	touch $@

test: install
	$(PY) -m pytest

demo: install
	$(SOPPU) examples build --users $(DEMO_USERS) --out $(EXAMPLES_DIR)
	$(SOPPU) examples check $(EXAMPLES_DIR)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every benchmark script under bench/ (modules starting with "_" are shared helpers). JSON on stdout.
bench: install
	@set -e; for script in bench/[!_]*.py; do echo "== $$script" >&2; $(PY) $$script; done

# The docker stack. So far only MinIO and its bucket; the services, LoRAX and the engine join with the stack issue.
up: .env
	docker compose up -d
	@echo "MinIO: http://localhost:9000 (console http://localhost:9001); credentials in .env"

down:
	docker compose down

# A fresh .env with random secrets, never overwriting an existing one.
.env:
	@umask 077; sed "s/^MINIO_ROOT_PASSWORD=.*/MINIO_ROOT_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))')/" .env.example > $@
	@echo "wrote .env with a random MinIO password"

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
