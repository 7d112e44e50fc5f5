# The presence worker image: one image for every role (migrate, worker, beat, flower, emulator);
# docker-compose.yml picks the command. Build: docker compose build (or docker build -t presence-worker .)
#
# The base image is the python:3.11-slim tag pinned by digest (3.11.10-slim-bookworm when it was
# pinned); `make lock` re-resolves the tag's current digest where docker buildx, crane or skopeo
# can reach Docker Hub, and says so when none can.
FROM python:3.11-slim@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Exactly the locked versions, each checked against its hash (requirements/runtime.txt: the
# package and its postgres extra, whose driver serves DATABASE_URL=postgresql+psycopg://…; no
# demo-only embedded Redis), then the package itself with nothing more (--no-deps); pip check
# proves the lock satisfies it. Only what the package needs is copied (.dockerignore is an
# allowlist); the sources go once installed.
WORKDIR /tmp/src
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY . .
RUN pip install --no-deps . \
    && pip check \
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
