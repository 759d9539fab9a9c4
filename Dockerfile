# syntax=docker/dockerfile:1
# recloop worker image: `docker build -t recloop .`, then `docker run recloop worker`
# (or any other `recloop` subcommand). The broker is never embedded in a container:
# set RECLOOP__KAFKA__BOOTSTRAP_SERVERS (docker-compose.yml does).

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: wheels for recloop and every dependency ------------------------------------
FROM ${PYTHON_IMAGE} AS build
# hnswlib ships only an sdist, so it needs a C++ compiler here (and only here).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Metadata first, so a code change does not invalidate the layer above.
COPY pyproject.toml ./
COPY pipeline ./pipeline
COPY operators ./operators
COPY schemas ./schemas
RUN pip wheel --wheel-dir /wheels .

# -- runtime: the wheels installed, no compiler ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    RECLOOP__WORKER__STATE_DIR=/var/lib/recloop
# A fixed uid/gid so volume ownership is predictable. The state directory exists in the
# image, owned by that user, so a fresh named volume inherits the ownership.
RUN groupadd --system --gid 10001 recloop \
    && useradd --system --uid 10001 --gid recloop --home-dir /home/recloop --create-home \
        --shell /usr/sbin/nologin recloop \
    && install --directory --owner=recloop --group=recloop --mode=0750 /var/lib/recloop
# Bind-mount the wheels rather than COPY them, so they never become an image layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels recloop
USER 10001:10001
# `recloop demo` and `recloop schemas export` write relative to the working directory.
WORKDIR /home/recloop
VOLUME ["/var/lib/recloop"]
ENTRYPOINT ["recloop"]
CMD ["worker"]
