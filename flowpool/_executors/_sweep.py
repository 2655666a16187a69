"""What flowpool leaves in shared temporary folders, and when another process may remove it.

Spool files (``flowpool-PID-spool-*``), lane flag files (``flowpool-PID-laneN-*``, in
``/dev/shm`` when it exists) and the log socket's folder (``flowpool-logs-PID-*``) are
removed by their owner; one whose owner was killed is left behind. Each owner holds
a shared ``flock`` on its file (or folder) for as long as it uses it, and a sweeper
removes one only if it gets an exclusive lock on it without waiting. A pid in the name
is not enough on its own: a process in another PID namespace (a container sharing
``/tmp``) cannot see the owner, and would take a live run's file for a dead one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import stat
import time

__all__ = ["GRACE", "hold", "hold_path", "sweep"]

#: Seconds a new file is left alone whatever its lock: its owner creates it, then locks it.
GRACE = 60.0


def hold(fd: int) -> None:
    """Mark the open file (or folder) ``fd`` as in use until it is closed."""
    with contextlib.suppress(OSError):  # a file system without flock: only the pid check guards it
        fcntl.flock(fd, fcntl.LOCK_SH)


def hold_path(path: str) -> int:
    """Open ``path`` (a folder too) and ``hold`` it; close the returned fd to let it go."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    hold(fd)
    return fd


def _visible(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive under another user
        return True
    return True


def sweep(directory: str, pattern: str, pid_field: int = 1) -> None:
    """Remove what matches ``pattern`` in ``directory`` and no live owner holds.

    The owner's pid is the name's ``pid_field``-th dash-separated part: a name without
    one is left alone (made by a flowpool from before these locks, it may be in use)."""
    now = time.time()
    uid = os.getuid()
    for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
        try:
            pid = int(os.path.basename(path).split("-")[pid_field])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid() or _visible(pid):  # (also guards an owner from before these locks)
            continue
        try:
            info = os.lstat(path)
            if info.st_uid != uid or stat.S_ISLNK(info.st_mode) or now - info.st_mtime < GRACE:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its owner is alive (in whatever namespace)
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        finally:
            os.close(fd)
