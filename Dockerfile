# syntax=docker/dockerfile:1
# devplug image for amd64, arm64 and arm/v7 (Raspberry Pi OS 32-bit):
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t REGISTRY/devplug:0.1.0 --push .
# The entrypoint is `devplug run`; manifests/ runs it (docs/deploy.md).
#
# Dependencies per platform (checked against PyPI for CPython 3.12): protobuf publishes
# manylinux wheels for x86_64 and aarch64 and a pure-Python wheel for the rest (arm/v7);
# attrs, h11, h2, inotify_simple, prometheus_client, pyudev and trio are pure Python. No
# dependency compiles anything (devplug speaks gRPC over h2 itself: no grpcio, no greenlet),
# so the build stage needs no compiler.
ARG PYTHON_VERSION=3.12
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# tests/deploy/test_wheel.py copies exactly these paths, then runs the same script.
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts/build-wheels ./scripts/build-wheels
RUN scripts/build-wheels /wheels

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
# libudev1: pyudev loads it with ctypes. libstdc++6: protobuf's C extension (upb) links
# it. Nothing else: no compiler, no shell tools beyond the base image's.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libudev1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The wheels are bind-mounted, not copied, so they leave no layer behind. pip compiles the
# .pyc files now, which is why a read-only root filesystem costs nothing at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels devplug \
 && devplug --help >/dev/null
# Nothing in the image needs root: by default it runs as an unprivileged user (fine for
# `devplug rules check`, `devplug devices`). The DaemonSet sets runAsUser: 0 because
# kubelet's device-plugins directory is root's (see manifests/base/daemonset.yaml).
USER 65532:65532
ENTRYPOINT ["devplug", "run"]
