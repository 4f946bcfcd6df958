# syntax=docker/dockerfile:1
# hubbub's container image: one image for `hubbub serve` (the default command) and the operator
# (`hubbub-operator`, or `python -m hubbub_operator` as operator/hubbub_operator/deploy/operator.yaml
# runs it: /venv/bin is first on PATH).
#
#   docker build -t hubbub:dev .                                               # Debian bookworm's python3
#   docker build --build-arg BASE=python:3.11-slim-bookworm -t hubbub:dev .    # python.org's build
#
# BASE is a Debian-based image (apt, useradd). When it has a python3 (3.11 or newer) that one is
# used, else apt installs Debian's. Without Docker or a registry, scripts/build-image builds this
# same file with buildah, on a base made by debootstrap and named localhost/debian:bookworm-slim.
#
# Stages: `runtime` (the base and its Python, shared by both: the venv's python is a link to the
# base's interpreter, so it must be at the same path in the builder and in the image), `builder`
# (pip and the build backend, pinned with hashes: requirements/build.lock, requirements/image.lock)
# and the image itself, which gets only /venv: no pip, no build backend, no compiler, no caches.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
RUN set -eu; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "hubbub needs Python 3.11+: " + sys.version'

FROM runtime AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 PIP_PROGRESS_BAR=off PIP_ROOT_USER_ACTION=ignore
# pip itself lives in /build, with the build backend; /venv is made without one. Debian's python3
# needs python3-venv (ensurepip) for that; python.org's has it.
RUN set -eu; \
    if ! python3 -m venv /build 2>/dev/null; then \
        rm -rf /build; \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; \
        python3 -m venv /build; \
    fi; \
    python3 -m venv --without-pip /venv
# The dependencies first, so that a change in the sources does not install them again. Hashes are
# checked, wheels only (nothing is compiled). A TLS-intercepting proxy's CA bundle can be passed
# as the secret `ca` (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`): it is mounted for
# this step only and is in no layer.
COPY requirements/build.lock requirements/image.lock /src/requirements/
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.pem \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    if [ -s /run/secrets/ca.pem ]; then export PIP_CERT=/run/secrets/ca.pem; fi; \
    /build/bin/pip install -q --require-hashes --only-binary=:all: -r /src/requirements/build.lock; \
    /build/bin/pip --python /venv/bin/python install -q --require-hashes --only-binary=:all: \
        -r /src/requirements/image.lock
# hubbub's wheel (service/ and operator/, as pyproject.toml packages them), built offline with the
# pinned backend, then installed for /venv without its dependencies (they are all there) but
# under /app (`--root`): the image copies /venv and /app separately, so a change in the sources
# makes a new small layer, not a new /venv.
COPY pyproject.toml /src/
COPY service /src/service
COPY operator /src/operator
RUN set -eu; \
    /build/bin/pip wheel -q --no-deps --no-build-isolation --no-index --no-cache-dir -w /wheels /src; \
    /build/bin/pip --python /venv/bin/python install -q --no-deps --no-index --no-cache-dir --no-warn-script-location \
        --root /app \
        /wheels/hubbub-*.whl; \
    site=$(/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'); \
    PYTHONPATH=/app$site /app/venv/bin/hubbub --version

FROM runtime
RUN useradd --uid 10001 --user-group --home-dir /home/hubbub --create-home --shell /usr/sbin/nologin hubbub
COPY --from=builder /venv /venv
COPY --from=builder /app /
# The service writes nothing but its temporary files (into /tmp, an emptyDir in the pods), so the
# root filesystem can be read-only; the modules were compiled at install time.
ENV PATH=/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/hubbub
EXPOSE 8000
ENTRYPOINT ["hubbub"]
CMD ["serve", "--host", "0.0.0.0"]
