# Container image for the perp-relayer daemon (`relayer`).
#
# Build with `make container` (scripts/container.sh), or by hand:
#   docker build -t relayers:latest .
#   buildah --storage-driver vfs bud --isolation chroot --format docker -t relayers:latest .
# (`--format docker` matters for buildah: the OCI image format has no HEALTHCHECK.)
#
# The base image is a build argument. It must be Debian-based and provide `python3` (3.11) on PATH:
#   python:3.11-slim (default)   python at /usr/local/bin, headers included
#   a debootstrap'ed bookworm    python at /usr/bin, headers come from python3-dev
#     (`scripts/container.sh --local-base` builds one and passes BASE_IMAGE)
# Both stages start from the same base and the venv is built with that base's python3, so the
# venv copied into the runtime stage points at an interpreter that exists there.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: compile the dependencies into a self-contained venv at /opt/relayer
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# CA bundle pip verifies PyPI with. scripts/container.sh bind-mounts the host's bundle over this
# path for RUN steps only (a host behind a TLS-intercepting proxy needs its CA); nothing of it is
# copied into the runtime stage.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120

# libp2p pulls in fastecdsa, which compiles from source against GMP: it needs gcc, the GMP headers
# and Python.h. python:*-slim ships Python.h and the venv module for its own python; a Debian
# python does not, so python3-dev / python3-venv are added only when missing.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev; \
    include_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')"; \
    [ -f "${include_dir}/Python.h" ] || apt-get install -y --no-install-recommends python3-dev; \
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt-get install -y --no-install-recommends python3-venv; \
    rm -rf /var/lib/apt/lists/*; \
    python3 --version; \
    python3 -m venv /opt/relayer

# Dependencies first, from the lock only (exact pins), so docker's layer cache keeps this step
# while only the project's own source changes.
COPY requirements/runtime.lock /tmp/runtime.lock
RUN /opt/relayer/bin/pip install -r /tmp/runtime.lock

# The project itself; its dependencies are all in the lock already.
COPY . /src
RUN /opt/relayer/bin/pip install --no-deps /src \
    && /opt/relayer/bin/relayer --help >/dev/null

# ---------------------------------------------------------------------------------------------
# runtime: the base plus the venv, running as an unprivileged user
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

LABEL org.opencontainers.image.title="perp-relayer" \
      org.opencontainers.image.description="Relayer node for a decentralised perpetual-futures exchange"

# fastecdsa links libgmp.so.10 at run time. Debian's coreutils already depends on it, so it is in
# every Debian base; install it only if a base lacks it.
RUN set -eux; \
    if ! ldconfig -p | grep -F 'libgmp.so.10' >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends libgmp10; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 relayer; \
    useradd --uid 10001 --gid relayer --no-create-home \
        --home-dir /var/lib/relayer --shell /usr/sbin/nologin relayer; \
    install -d -o relayer -g relayer -m 0750 /etc/relayer /var/lib/relayer

COPY --from=build /opt/relayer /opt/relayer

# Container defaults, overriding config.json (RELAYER__SECTION__KEY, docs/config.md): the API listens on all
# interfaces so a published port reaches it, and the node's data goes to the data volume. Override with -e.
ENV PATH=/opt/relayer/bin:${PATH} \
    RELAYER__API__HOST=0.0.0.0 \
    RELAYER__NODE__DATA_DIR=/var/lib/relayer \
    VIRTUAL_ENV=/opt/relayer \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The `relayer` user created above, by number so a runtime can tell it is not root without reading
# the image's /etc/passwd (e.g. Kubernetes runAsNonRoot).
USER 10001:10001
WORKDIR /var/lib/relayer

# 9000: libp2p (TCP); 8080: HTTP API (/health, /metrics, orders).
EXPOSE 9000 8080
# /etc/relayer: config.json and the keystore; /var/lib/relayer: the node's data (LevelDB, journal).
VOLUME ["/etc/relayer", "/var/lib/relayer"]

# Healthy when the API answers GET /health with a 2xx (urlopen raises on anything else, and on a
# refused connection); plain python so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/relayer/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

ENTRYPOINT ["relayer"]
CMD ["run", "--config", "/etc/relayer/config.json"]
