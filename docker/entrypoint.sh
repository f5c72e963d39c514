#!/bin/sh
# The image's entry point: when the data root cannot be written by this user, print the
# one command that mends it; then become snapshot-processor with the container's arguments.
#
# Docker creates a missing bind-mounted folder owned by root, and the daemon runs as an
# unprivileged user: that is the usual first-boot failure on a fresh server. A command
# other than `run` exits 77 at once. The daemon (`run`) waits for the folder instead and
# starts by itself once it can write there: an exit would only be restarted over and over
# by `restart: unless-stopped`, printing the hint each time.
set -eu

# Distinct from every exit code of snapshot-processor (0-7): sysexits' EX_NOPERM.
EXIT_DATA_ROOT_NOT_WRITABLE=77
# While `run` waits: how often it looks again, and how often it repeats a reminder.
recheck="${ENTRYPOINT_RECHECK_SECONDS:-5}"
remind="${ENTRYPOINT_REMINDER_SECONDS:-600}"
unset ENTRYPOINT_RECHECK_SECONDS ENTRYPOINT_REMINDER_SECONDS

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

# The command among the arguments: the first one that is neither an option nor the value
# of --config, the one global option that takes a value.
command_of() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --config) shift ;;
            -*) ;;
            *) echo "$1"; return ;;
        esac
        [ $# -gt 0 ] && shift
    done
}

if writable "$root"; then
    exec snapshot-processor "$@"
fi

echo "snapshot-processor: the data root $root cannot be written by uid $uid (gid $gid)." >&2
echo "On the host, in the folder of docker-compose.yml, run:" >&2
echo "    sudo chown -R $uid:$gid $host_dir" >&2
if [ "$(command_of "$@")" != run ]; then
    echo "(a read-only mount must be made writable instead), then run the command again." >&2
    exit "$EXIT_DATA_ROOT_NOT_WRITABLE"
fi
echo "(a read-only mount must be made writable instead); the daemon starts by itself once" >&2
echo "it can write there (looking again every ${recheck} s)." >&2

# As PID 1 only a trapped signal is delivered; sleeping in the background keeps the wait
# interruptible, so `docker stop` ends it at once.
sleeper=""
trap 'kill $sleeper 2>/dev/null; exit "$EXIT_DATA_ROOT_NOT_WRITABLE"' TERM INT
reminded="$(date +%s)"
while ! writable "$root"; do
    sleep "$recheck" &
    sleeper=$!
    wait "$sleeper" || true
    now="$(date +%s)"
    if [ $((now - reminded)) -ge "$remind" ]; then
        echo "snapshot-processor: still waiting for the data root $root to be writable by uid $uid: sudo chown -R $uid:$gid $host_dir" >&2
        reminded="$now"
    fi
done
trap - TERM INT
echo "snapshot-processor: the data root $root is writable now; starting." >&2
exec snapshot-processor "$@"
