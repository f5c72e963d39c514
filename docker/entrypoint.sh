#!/bin/sh
# The image's entry point: refuse to start, with the one command that mends it, when the
# data root cannot be written by this user, instead of letting the daemon die at start
# over and over; then become snapshot-processor with the container's arguments.
#
# Docker creates a missing bind-mounted folder owned by root, and the daemon runs as an
# unprivileged user: that is the usual first-boot failure on a fresh server.
set -eu

# Distinct from every exit code of snapshot-processor (0-7): sysexits' EX_NOPERM.
EXIT_DATA_ROOT_NOT_WRITABLE=77

root="${SNAPSHOTS_ROOT_DIR:-/data/ftp}"
# The host folder mounted on the data root, for the message; docker-compose.yml passes it.
host_dir="${SNAPSHOTS_HOST_DIR:-<the host folder mounted on $root>}"
uid="$(id -u)"
gid="$(id -g)"

writable() {
    # Writing a file is the only test that holds for every case: ownership, modes, ACLs,
    # a read-only mount, and root (for whom `test -w` is true on a read-only mount too).
    mkdir -p "$1" 2>/dev/null || return 1
    probe="$1/.entrypoint-write-test.$$"
    (: >"$probe") 2>/dev/null || return 1
    rm -f "$probe"
}

if ! writable "$root"; then
    echo "snapshot-processor: the data root $root cannot be written by uid $uid (gid $gid)." >&2
    echo "On the host, in the folder of docker-compose.yml, run:" >&2
    echo "    sudo chown -R $uid:$gid $host_dir" >&2
    echo "(a read-only mount must be made writable instead), then start the container again." >&2
    exit "$EXIT_DATA_ROOT_NOT_WRITABLE"
fi

exec snapshot-processor "$@"
