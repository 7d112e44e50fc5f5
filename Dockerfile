# The presence worker image: one image for every role (migrate, worker, beat, flower, emulator);
# docker-compose.yml picks the command. Build: docker compose build (or docker build -t presence-worker .)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (.dockerignore is an allowlist); installed, then the sources go.
# The postgres extra brings the PostgreSQL driver for DATABASE_URL=postgresql+psycopg://…
WORKDIR /tmp/src
COPY . .
RUN pip install ".[postgres]" \
    && cd / && rm -rf /tmp/src

# Never root: a system user without a login shell; /var/lib/presence is its writable state
# (celery beat's schedule file).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/presence \
        --shell /usr/sbin/nologin presence \
    && install -d -o presence -g presence /var/lib/presence
USER presence
WORKDIR /home/presence

EXPOSE 5555 8080
CMD ["presence", "--help"]
