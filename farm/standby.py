"""A standby embedded farm: a farm process started ahead of time for the next session.

Starting the embedded farm costs ~0.3 s of CPU, mostly importing aiohttp.  A
suite that collects faster than that (400 tests collect in ~0.15 s) waits for
its farm.  So when a session's farm stops, it starts a successor that imports
everything and then waits, at most :data:`IDLE_SECONDS`, on a Unix socket for
the next ``pytest --psyduck`` of the same Python installation and psyduck
code — the way Bazel keeps its server, but idle-limited and single-use.

A session *claims* the standby by sending it what it would otherwise pass to a
fresh farm: the settings line plus its stdin (the lifeline), stdout (the
answer), stderr and launch socket, as file descriptors over ``SCM_RIGHTS``.
From then on the standby is exactly a fresh farm of that session: it takes the
session's environment and working directory, answers on the session's pipe
and stops when the session's lifeline closes.  A standby serves one session.

The socket lives in a directory only its user may enter and names a digest of
what the warmed-up process has loaded (interpreter, ``PYTHONPATH``, site
packages, farm code): a standby is never handed to a session it does not match.
The standby also checks the peer's uid.  ``PSYDUCK_STANDBY=0`` turns the
whole mechanism off.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Seconds a standby waits for a session before it exits (``PSYDUCK_STANDBY_IDLE``).
IDLE_SECONDS = 600.0
#: The request's size limit: settings plus the session's environment.
MAX_REQUEST = 1024 * 1024
#: Seconds a standby gives a connected session to send its request.
REQUEST_TIMEOUT = 5.0
#: File descriptors a session hands over: lifeline, answer, stderr, launch socket.
HANDED_FDS = 4
#: Longest path a Unix socket can be bound to on Linux (``sun_path`` less its NUL).
MAX_SOCKET_PATH = 107
#: Seconds a successor waits for the pytest it follows to exit before it warms up anyway.
QUIET_LIMIT = 10.0


def enabled() -> bool:
    return os.environ.get("PSYDUCK_STANDBY", "1") != "0"


def _runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "psyduck"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "psyduck" / "standby"


def _fingerprint(root: Path) -> list[tuple[str, int, int]]:
    """Name, modification time and size of every module under *root*."""
    stats = ((str(p), p.stat()) for p in sorted(root.rglob("*.py")))
    return [(name, st.st_mtime_ns, st.st_size) for name, st in stats]


def standby_path() -> Path:
    """The socket of the standby that matches this interpreter and this psyduck code.

    Creates its directory (mode 0700) if needed.  The digest covers what a
    standby has imported before it is claimed: a change to any of it (an
    upgrade, an edit of the farm's code) names another socket.
    """
    farm_dir = Path(__file__).resolve().parent
    packages = []
    for name in ("aiohttp", "msgpack"):
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec and spec.origin else None
        packages.append(
            (name, str(origin), origin.parent.parent.stat().st_mtime_ns if origin else 0)
        )
    key = json.dumps(
        [
            sys.executable,
            sys.prefix,
            os.environ.get("PYTHONPATH", ""),
            os.getuid(),
            packages,
            _fingerprint(farm_dir),
        ]
    )
    directory = _runtime_dir()
    path = directory / f"farm-{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise OSError(errno.ENAMETOOLONG, "too long for a Unix socket", str(path))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def standby_pids(runtime_dir: Path) -> list[int]:
    """Pids of the standby farms, waiting or claimed, whose socket is under *runtime_dir*."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"--standby" in args and any(os.fsencode(runtime_dir) in a for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def farm_command(*args: str) -> list[str]:
    """The embedded farm's command line.  ``-P``: the working directory is the
    user's project, and a package of theirs must not shadow psyduck's."""
    return [sys.executable, "-P", "-m", "farm.embedded", *args]


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a Unix socket."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid, uid


# -- the session's side ---------------------------------------------------------------


def claim(path: Path, settings: dict[str, Any], fds: list[int]) -> int | None:
    """Hand *settings* and *fds* to the standby at *path*; its pid, or None if there is none.

    *settings* are a fresh farm's plus ``env`` and ``cwd``: the standby takes
    them on, as a process started now by the session would have them.

    Never waits for the standby: if it turns out not to take the request (it
    was just exiting), the session finds its answer pipe closed and starts a
    fresh farm instead.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(str(path))
        pid, uid = _peer(sock)
        if uid != os.getuid():
            return None
        socket.send_fds(sock, [json.dumps(settings).encode()], fds)
        return pid
    except OSError:
        return None
    finally:
        sock.close()


# -- the standby's side ---------------------------------------------------------------


def start_successor(path: Path) -> None:
    """Start a standby at *path* unless one is already there (it holds the lock).

    The successor warms up only once the pytest this farm served has exited
    (see :func:`wait_for_session`).
    """
    try:
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # held: a standby is already waiting there (or the directory is gone)
    env = dict(os.environ)
    owner = env.pop("PSYDUCK_FARM_OWNER", None)
    subprocess.Popen(
        farm_command("--standby", str(path), *([owner] if owner else [])),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd="/",
    )


def _idle_seconds() -> float:
    try:
        return float(os.environ.get("PSYDUCK_STANDBY_IDLE", IDLE_SECONDS))
    except ValueError:
        return IDLE_SECONDS


def wait_for_session(
    path: Path, warm_up: Callable[[], None], after: int | None = None
) -> dict[str, Any] | None:
    """Be the standby at *path*: the claiming session's settings, or None when idle too long.

    Binds before *warm_up* (the heavy imports), so a session that arrives
    meanwhile is already queued.  With *after*, the pid of the pytest whose
    farm started this one, warming up waits until that process has exited (or
    a session connects, or :data:`QUIET_LIMIT` passes): on a small machine,
    ~0.3 s of imports beside that pytest's last steps (its final garbage
    collection, reports, plugins' summaries) make them markedly slower.  On
    return the session's fds are this process's 0, 1 and 2, and its
    environment and working directory are ours.
    """
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return None  # another standby already serves this path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # we hold the lock: whatever is there is stale
        listener.bind(str(path))
        listener.listen(8)
        if after is not None:
            _wait_for_exit(after, listener)
        warm_up()
        deadline = time.monotonic() + _idle_seconds()
        while (remaining := deadline - time.monotonic()) > 0:
            listener.settimeout(remaining)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                return None
            request = _receive(conn)
            if request is not None:
                return _become(*request)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.close()
        os.close(lock)


def _wait_for_exit(pid: int, listener: socket.socket) -> None:
    """Return once *pid* has exited, a session is connecting, or :data:`QUIET_LIMIT` passed."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        select.select([pidfd, listener], [], [], QUIET_LIMIT)
    finally:
        os.close(pidfd)


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    with conn:
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            if _peer(conn)[1] != os.getuid():
                return None
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, HANDED_FDS)
        except OSError:
            return None
        try:
            settings = json.loads(data)
        except ValueError:
            settings = None
        if (
            len(fds) != HANDED_FDS
            or not isinstance(settings, dict)
            or not isinstance(settings.get("env"), dict)
            or not isinstance(settings.get("cwd"), str)
        ):
            for fd in fds:
                os.close(fd)
            return None
        return settings, fds


def _become(settings: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    lifeline, answer, stderr, launcher = fds
    for fd, target in ((lifeline, 0), (answer, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    env, cwd = settings.pop("env"), settings.pop("cwd")
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    return {**settings, "launcher_fd": launcher}
