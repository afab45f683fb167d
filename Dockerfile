# syntax=docker/dockerfile:1
# The one Praxis image: every service, picked by the container's command
# (python -m praxis_scheduler | praxis_code_manager | praxis_asset_manager | praxis_audit |
# praxis_gateway |
# praxis_orchestrator; praxis_orchestrator.zygote, praxis_runtime.spawner and
# praxis_runtime.provision for the sandboxes and the provisioning Job: deploy/k8s).
#
#   make image                      # docker build -t praxis:dev .
#
# Runtime dependencies only, at the versions of uv.lock: deploy/image/requirements.sh is the
# one definition of that set (tests/deploy/test_image.py installs the same and starts every
# service from it). No dev group, no praxis-devstack (embedded servers), no pytest.
ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build
# The uv of the Makefile (UV_VERSION); `make image` passes it.
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN python -m pip install "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
COPY deploy/image/requirements.sh deploy/image/requirements.sh
# Exactly the exported set (--no-deps: nothing resolved beyond uv.lock), compiled to bytecode
# (the root filesystem is read-only at run time), then checked to be consistent.
RUN sh deploy/image/requirements.sh > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/praxis \
 && uv pip install --python /opt/praxis/bin/python --no-deps --compile-bytecode \
        -r /tmp/requirements.txt \
 && uv pip check --python /opt/praxis/bin/python

# ---------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
# git + ssh: the code-manager clones protocol repositories (https and ssh sources).
# libusb, libftdi, hidapi: PyLabRobot's hardware backends on the orchestrator (pyusb,
# pylibftdi and hid load them at run time).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        git \
        openssh-client \
        libusb-1.0-0 \
        libftdi1-2 \
        libhidapi-hidraw0 \
        libhidapi-libusb0 \
 && rm -rf /var/lib/apt/lists/*
# Not root: UID/GID 10001, as the manifests' securityContext says (runAsUser 10001).
RUN groupadd --gid 10001 praxis \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin praxis
COPY --from=build /opt/praxis /opt/praxis
# PYTHONSAFEPATH: `python -m` does not put the working directory on sys.path.
ENV PATH=/opt/praxis/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1
WORKDIR /
USER 10001:10001
CMD ["python", "-c", "print('Praxis image: run python -m praxis_<service> (see deploy/k8s)')"]
