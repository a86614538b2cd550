# csi-py: the CSI driver image (Identity, Controller and Node services in one process).
#
#   docker build -t csi-py:0.1.0 .
#
# Stage 1 builds the wheels (csi-py itself and its dependencies, all binary wheels from
# PyPI); stage 2 installs them offline on a slim Python with only the filesystem tools the
# driver runs: mkfs/resize/fsck for ext4, xfs and btrfs, and blkid. No compilers, no pip
# cache, no apt lists. The Debian versions are bookworm's as of this writing (amd64); a
# build for another architecture or a later point release may need other --build-arg values.

ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY csi_py ./csi_py
# Build our wheel and fetch every runtime dependency as a wheel, so the final stage
# installs without network access to anything but what is copied in.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG E2FSPROGS_VERSION=1.47.0-2+b2
ARG XFSPROGS_VERSION=6.1.0-1
ARG BTRFS_PROGS_VERSION=6.2-1+deb12u2
ARG UTIL_LINUX_VERSION=2.38.1-5+deb12u3

LABEL org.opencontainers.image.title="csi-py" \
      org.opencontainers.image.description="Kubernetes CSI driver: loop-device-backed volumes with real ext4, xfs and btrfs filesystems" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.csi-py.driver-name="loop.csi-py.io"

# The driver must run as root in a privileged container: it attaches loop devices,
# formats them and mounts them into the kubelet's directories.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        e2fsprogs="${E2FSPROGS_VERSION}" \
        xfsprogs="${XFSPROGS_VERSION}" \
        btrfs-progs="${BTRFS_PROGS_VERSION}" \
        util-linux="${UTIL_LINUX_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels "csipy-loop==${VERSION}" \
    && rm -rf /wheels \
    && csi-py --version

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LC_ALL=C.UTF-8

# Metrics (when --metrics-address :9810 is given); the CSI socket is a unix socket.
EXPOSE 9810
ENTRYPOINT ["csi-py", "serve"]
