#!/usr/bin/env bash
# Build a Debian bookworm base image with no image registry: debootstrap a
# minimal root filesystem from Debian's package mirror and `docker import` it.
# This is how this machine (no registry) and air-gapped customers get a base
# for the runtime image; elsewhere the Dockerfile's default python:slim works.
#
# Usage: docker/build-base-image.sh [IMAGE]   (default ariel-base:bookworm)
# Env:   ARIEL_DEBIAN_MIRROR  (default http://deb.debian.org/debian)
set -euo pipefail

image="${1:-ariel-base:bookworm}"
mirror="${ARIEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }

root="$(mktemp -d /tmp/ariel-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
echo "debootstrap bookworm into $root (a few minutes) ..."
# tini is PID 1 of the runtime image; python3-venv lets the image make its venv.
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,tini \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
echo "importing as $image ..."
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
rm -f "$root.log"
echo "built $image in $(( $(date +%s) - start )) s"
