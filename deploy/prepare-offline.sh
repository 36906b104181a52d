#!/usr/bin/env bash
# Prepares a machine that cannot reach any image registry to run the
# docker-compose cluster, and builds the image `nas:latest` from binaries
# built here on the host. Use it when `docker pull debian:bookworm-slim` or
# `docker pull rust:1.95-slim-bookworm` fails (no registry), or when the
# machine has no Docker engine yet. Run as root from anywhere; it is safe to
# run again (every step checks first).
#
#   1. installs Debian's docker.io, docker-compose (v1) and debootstrap if missing;
#   2. starts dockerd if none answers (no systemd needed);
#   3. builds the base image debian:bookworm-slim with debootstrap when it
#      is not there and cannot be pulled;
#   4. builds nasd and nasctl on the host (cargo build --release) and the
#      image nas:latest from them (deploy/Dockerfile, target `prebuilt`).
#
# Environment:
#   NAS_IMAGE       image to build (default nas:latest)
#   DEBIAN_MIRROR   mirror for debootstrap (default: the one apt uses)
#   DOCKERD_LOG     where a dockerd started here logs (default /var/log/dockerd.log)
set -euo pipefail
self=$(readlink -f "$0")
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "prepare-offline.sh: takes no arguments (see --help)" >&2; exit 2 ;;
esac
cd "$(dirname "$self")/.."

NAS_IMAGE=${NAS_IMAGE:-nas:latest}
BASE_IMAGE=debian:bookworm-slim
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}

say() { printf '== %s\n' "$*"; }
die() { printf 'prepare-offline: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

# 1. Packages.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The engine. dockerd from Debian is API 1.41; a newer CLI negotiates down.
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see $DOCKERD_LOG"
fi

# 3. The base image the Dockerfile names.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if timeout 30 docker pull "$BASE_IMAGE" >/dev/null 2>&1; then
        say "pulled $BASE_IMAGE"
    else
        mirror=${DEBIAN_MIRROR:-$(deploy/apt-mirror.sh)} || die "no Debian mirror: set DEBIAN_MIRROR"
        root=$(mktemp -d /tmp/nas-rootfs.XXXXXX)
        trap 'rm -rf "$root"' EXIT
        say "no registry: building $BASE_IMAGE with debootstrap from $mirror (about a minute)"
        debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
            || die "debootstrap failed; see $root.log"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
            "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
        tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
        rm -rf "$root" "$root.log"
        trap - EXIT
        say "imported $BASE_IMAGE"
    fi
fi

# 4. Binaries from the host (same Debian release as the base image), then the image.
say "building nasd and nasctl (cargo build --release)"
cargo build --release --locked --quiet --bin nasd --bin nasctl
mkdir -p deploy/bin
for bin in nasd nasctl; do
    # Without debug info the image is a third of the size.
    strip -o "deploy/bin/$bin" "target/release/$bin" 2>/dev/null || cp "target/release/$bin" deploy/bin/
done
say "building $NAS_IMAGE (deploy/Dockerfile, target prebuilt)"
build_log=$(mktemp)
DOCKER_BUILDKIT=0 docker build -f deploy/Dockerfile --target prebuilt -t "$NAS_IMAGE" . >"$build_log" 2>&1 \
    || { cat "$build_log" >&2; rm -f "$build_log"; die "docker build failed"; }
rm -f "$build_log"
docker run --rm --entrypoint nasctl "$NAS_IMAGE" --version >/dev/null \
    || die "the image $NAS_IMAGE does not run nasctl; see the docker build above"
say "ready: docker-compose -f deploy/docker-compose.yml up -d   (or: deploy/drill.sh)"
