#!/bin/sh
# PID 1 of a builder container started by `cargo xtask --container`.
#
# 1. Refuses at once, with the reason, when the container cannot do what the pipeline needs:
#    root, a private mount and PID namespace (the build root), mounts, and loop devices
#    (`disk`). An engine that ignores --privileged, or a rootless one, fails here and not an
#    hour into a build.
# 2. Ties the build to the xtask on the host that started it. That xtask holds this container's
#    stdin open for its whole life; when stdin reaches end of file (xtask finished, was
#    interrupted or was SIGKILLed), everything in the container is killed and PID 1 exits, so
#    the engine removes the container (--rm) and its mounts. Nothing outlives the host's xtask.
set -u

unprivileged() {
    echo "TRUTHDB-CONTAINER-UNPRIVILEGED: $*" >&2
    exit 70
}
[ "$(id -u)" = 0 ] || unprivileged "not root inside the container"
unshare --mount --pid --fork true 2>/dev/null || unprivileged "cannot make a private mount and PID namespace (unshare)"
probe=$(mktemp -d)
mount -t tmpfs probe "$probe" 2>/dev/null || unprivileged "cannot mount a file system"
umount "$probe"; rmdir "$probe"
[ -c /dev/loop-control ] || unprivileged "no /dev/loop-control (loop devices for disk images)"
# `--probe [PROGRAM...]`: the checks alone, then PROGRAM if given (xtask runs this before the
# real work, and asks whether its own binary starts here).
if [ "${1-}" = --probe ]; then
    shift
    [ $# -eq 0 ] && exit 0
    exec "$@" </dev/null
fi

# A background job's stdin would be /dev/null (POSIX, without job control): keep ours on 3.
exec 3<&0
"$@" </dev/null 3<&- &
build=$!
trap 'kill -TERM "$build" 2>/dev/null' INT TERM
{
    cat <&3 >/dev/null
    echo "truthdb-os-entry: the host's xtask is gone (stdin closed): stopping the build" >&2
    # Every process here but PID 1 and this one; PID 1 then sees the build end and exits,
    # and the kernel ends whatever is left in the namespace with it.
    kill -KILL -1
} <&3 &
exec 3<&-
wait "$build"
status=$?
# `wait` returns early when a trapped signal arrives: wait for the build itself to end.
while kill -0 "$build" 2>/dev/null; do wait "$build"; status=$?; done
exit "$status"
