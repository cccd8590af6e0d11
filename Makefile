# SOPPU developer entry points. `make demo` and `make test` are the two commands a newcomer needs;
# both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOPPU := $(VENV)/bin/soppu
TORCH_VERSION := 2.13.0
EXAMPLES_DIR ?= .cache/examples
DEMO_USERS ?= 20

.PHONY: install test demo lint format bench up down clean

# The stamp is rebuilt only when pyproject.toml changes, so a repeat `make install` takes no time.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test]'
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

bench: install
	@set -e; for script in bench/*.py; do echo "== $$script"; $(PY) $$script; done

# The docker stack (MinIO, LoRAX, services) lands with the stack issue; only MinIO is defined so far.
up:
	docker compose up -d

down:
	docker compose down

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
