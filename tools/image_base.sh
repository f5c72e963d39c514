#!/bin/sh
# The image the Dockerfile builds FROM, present locally: already there, else pulled from
# its registry, else (no registry reachable) a stand-in of the same name made from
# Debian's packages: debootstrap's minbase bookworm plus Debian's python3.11, pip and
# venv. The Dockerfile then builds unchanged; the stand-in is made once and kept.
#
#   ENGINE=podman tools/image_base.sh        (root: debootstrap needs it)
#
# ENGINE: docker or podman (default: podman if present, else docker); BASE: the name;
# PULL_SECONDS: how long a pull may try before the stand-in is made; DEBIAN_MIRROR: the
# archive (default: the first one this machine's apt uses).
set -eu

ENGINE="${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
BASE="${BASE:-docker.io/library/python:3.11-slim-bookworm}"
PULL_SECONDS="${PULL_SECONDS:-20}"
STAND_IN_LABEL="snapshot-processor.stand-in"

if "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
    echo "base image: $BASE (already here)"
    exit 0
fi
# Bounded: podman retries an unreachable registry for a long while.
if timeout "$PULL_SECONDS" "$ENGINE" pull -q "$BASE" >/dev/null 2>&1; then
    echo "base image: $BASE (pulled)"
    exit 0
fi

apt_mirror() {
    # One-line (`deb URL suite`) and deb822 (`URIs: URL`) sources alike; the archive is the
    # URL ending in /debian (not debian-security).
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -E '^[[:space:]]*(deb|URIs:)[[:space:]]' | tr -s ' \t' '\n\n' \
        | grep -E '^https?://[^ ]*/debian/?$' | head -n 1
}
mirror="${DEBIAN_MIRROR:-$(apt_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"

command -v debootstrap >/dev/null 2>&1 || {
    echo "no registry answers for $BASE and debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
}
echo "base image: no registry reachable; making a stand-in for $BASE from $mirror"

root="$(mktemp -d "${TMPDIR:-/tmp}/image-base.XXXXXX")"
trap 'rm -rf "$root" "$root.log"' EXIT
trap 'exit 130' INT TERM
# python-is-python3: `python` on PATH, as in the official image; python3-venv: ensurepip.
debootstrap --variant=minbase \
    --include=python3.11,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    exit 1
}
# The official image's pip installs into the system Python; Debian's refuses (PEP 668).
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# What a container never needs: downloaded packages, package lists, documentation.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*

tar -C "$root" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $STAND_IN_LABEL=debootstrap-minbase-bookworm" \
    --change 'CMD ["python3"]' \
    - "$BASE" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    exit 1
}
echo "base image: $BASE (stand-in made)"
