#!/usr/bin/env bash
# Make this host ready to run agents in Docker: a Docker engine that answers,
# the offline-built base image of the runtime image, npm (with Node.js),
# which `ariel build-image` uses to put the stdio MCP servers of the catalog
# (deployments/images/stdio_catalog.py) into the image's build context, and a
# compose tool for docker/compose.yaml.
#
# On a Debian/Ubuntu host as root with no engine running (a fresh server or
# CI machine), it installs docker.io, debootstrap and, when missing, Debian's
# npm and docker-compose, and starts dockerd with no bridge network: flow-run containers
# use host networking to reach the Prefect API on 127.0.0.1. That dockerd runs
# in a session of its own and outlives the caller: a Ctrl-C on `make up` stops
# Ariel, not the engine. Elsewhere it says what to do.
#
# Usage: docker/setup-host.sh [--optional]
#   --optional  warn and exit 0 when Docker cannot be had (Ariel then runs
#               agents as local processes); without it, exit 1.
# ARIEL_DOCKERD_LOG: where a dockerd it starts logs (/var/log/ariel-dockerd.log).
set -euo pipefail

optional=false
[ "${1:-}" = "--optional" ] && optional=true
here="$(cd "$(dirname "$0")" && pwd)"
base_image="${ARIEL_RUNTIME_BASE_IMAGE:-ariel-base:bookworm}"
dockerd_log="${ARIEL_DOCKERD_LOG:-/var/log/ariel-dockerd.log}"

give_up() {
  echo "setup-host: $1" >&2
  if $optional; then
    # ariel up then runs agents as local processes (a process work pool), and says so.
    echo "setup-host: continuing without Docker's runs; agents will run as local processes." >&2
    exit 0
  fi
  exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=false
apt_install() {
  command -v apt-get >/dev/null || give_up "no apt-get to install $*; install it by hand"
  is_root || give_up "installing $* needs root (sudo $0)"
  if ! $apt_updated; then
    echo "setup-host: apt-get update ..."
    apt-get update -q >/dev/null
    apt_updated=true
  fi
  echo "setup-host: installing $* ..."
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || apt_install docker.io
  is_root || give_up "the Docker engine is not running; start it (sudo systemctl start docker) or add yourself to the docker group"
  if ! pgrep -x dockerd >/dev/null; then
    echo "setup-host: starting dockerd (no bridge, no iptables; containers use host networking) ..."
    # In a session of its own: `make up` runs this in the terminal's process group, and the Ctrl-C that
    # stops Ariel must not stop the engine every other use of Docker on this host relies on.
    setsid --fork dockerd --bridge=none --iptables=false >"$dockerd_log" 2>&1 </dev/null
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || give_up "dockerd did not start; see $dockerd_log"
fi
echo "setup-host: Docker engine answers ($(docker info --format '{{.ServerVersion}}'))"

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  if [ "$base_image" != "ariel-base:bookworm" ]; then
    give_up "base image $base_image is not present; pull or load it (docker pull $base_image)"
  fi
  is_root || give_up "building the base image $base_image needs root (sudo $0)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  "$here/build-base-image.sh" "$base_image" || give_up "the base image $base_image could not be built (see above)"
fi
echo "setup-host: base image $base_image present"

# Only npm runs on this host (the image gets its own Node.js from the npm registry), so any npm will do;
# Debian's pulls in its nodejs. An operator whose catalog has no npm entries needs none: warn, don't stop.
if ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null && is_root; then
    apt_install npm
  else
    echo "setup-host: npm is missing; install Node.js and npm to build the runtime image's stdio MCP servers" \
      "(or set ARIEL_STDIO_CATALOG to a catalog without npm entries)" >&2
  fi
fi
if command -v npm >/dev/null; then echo "setup-host: npm $(npm --version) present"; fi

# docker/compose.yaml's tool: Compose v2 where its plugin is installed, else Debian's docker-compose (1.29,
# which reads the same file). Only the compose install and its test need it: warn, don't stop.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  if command -v apt-get >/dev/null && is_root; then
    apt_install docker-compose
  else
    echo "setup-host: no compose tool; install Docker Compose to run docker/compose.yaml" >&2
  fi
fi
if docker compose version >/dev/null 2>&1; then echo "setup-host: $(docker compose version) present"
elif command -v docker-compose >/dev/null; then echo "setup-host: $(docker-compose version --short 2>/dev/null | head -1 | sed 's/^/docker-compose /') present"; fi
