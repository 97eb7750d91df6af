"""The programs a worker container runs before its worker: the bootstrap and its relay,
and the copy of the code into the container's private tmpfs.

They run inside the container, under the image's Python, before psyduck's
packages are importable there, so each is source text the container's command
carries (``python -c``), kept here apart from the container plans that use
them; tests run them as real processes.
"""

from __future__ import annotations

#: Directories not copied into a container's private code copy: caches and VCS
#: data that tests do not read and that would only cost copy time and memory.
#: Not ``.hypothesis``: its example database is read by tests (plain pytest
#: replays the failing examples saved there first).  Not ``__pycache__``: it holds
#: the bytecode of the project's modules and the assertion-rewritten test modules
#: the client's pytest wrote as it collected; a container cannot write bytecode
#: (``PYTHONDONTWRITEBYTECODE``, read-only code), so without them every container
#: compiles and rewrites its shard's modules again.  pytest checks its pycs by the
#: source's hash, Python its own by the source's mtime and size, which copies and
#: payload tars keep; a stale pyc is compiled again, as on the client.
COPY_SKIP = (
    ".git",
    ".hg",
    ".tox",
    ".nox",
    ".venv",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
)

#: Seconds between two writes of the container's relay, at the least.
RELAY_LINGER = 0.01
#: Bytes the relay passes on at once at the most.
RELAY_BATCH = 1 << 20

#: Runs inside the container before the worker.  It forks: the child runs the
#: worker module exactly as ``python -m`` would (the cwd first on sys.path), with
#: a watcher thread that ends it as soon as stdin hangs up (the coordinator or its
#: connection went away), even in the middle of a long shard; the parent relays
#: the child's frames to stdout, at most one write per ``RELAY_LINGER``: a frame
#: after a quiet spell (``ready``, a shard's first ``started``) goes at once, and
#: what follows within the linger waits to go in one write.  A fast suite reports
#: a result every millisecond or so, and
#: each write to stdout is a message that the container's shim, dockerd (and
#: over ssh ``docker system dial-stdio``, sshd and paramiko) each handle on the
#: farm's CPUs; the worker itself writes every frame at once, so a worker killed
#: mid-shard (the OOM killer picks it, not the small relay) loses nothing it
#: reported.  The relay passes signals on to the worker, outlives it only to
#: pass on its last frames (a child of a test still holding the pipe does not
#: keep it), and exits with the worker's status (128+N for signal N, as a shell).
BOOTSTRAP = f"""\
import os, runpy, select, signal, sys, threading, time
def watch(fd=os.dup(0)):
    poll = select.poll()
    poll.register(fd, 0)
    while not any(event & (select.POLLHUP | select.POLLERR) for _, event in poll.poll()):
        pass
    os._exit(75)
def send(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
def relay(fd, worker):
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda number, frame: os.kill(worker, number))
    os.set_blocking(fd, False)
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    status, sent = None, -{RELAY_LINGER}
    while status is None:
        batch, until = bytearray(), None
        while len(batch) < {RELAY_BATCH}:
            wait = 100 if until is None else max(until - time.monotonic(), 0) * 1000
            if not poll.poll(wait):
                if until is not None:
                    break
                ended, code = os.waitpid(worker, os.WNOHANG)
                if ended:
                    status = code
                    break
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                status = os.waitpid(worker, 0)[1]
                break
            batch += chunk
            until = until or max(time.monotonic(), sent + {RELAY_LINGER})
        send(batch)
        sent = time.monotonic()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        send(chunk)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)
frames, worker_end = os.pipe()
worker = os.fork()
if worker:
    os.close(worker_end)
    relay(frames, worker)
os.close(frames)
os.dup2(worker_end, 1)
os.close(worker_end)
threading.Thread(target=watch, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

#: In copy mode, runs first (``python -S -c COPY_CODE BOOTSTRAP ARGS…``): copies the
#: read-only code into the private tmpfs at the code root, then replaces itself
#: with the interpreter that runs :data:`BOOTSTRAP`.  The code is thus in place
#: before that interpreter starts, as it is on the user's machine: ``site`` adds
#: the directories an editable install's ``.pth`` names only if they exist then.
#: ``PSYDUCK_CODE_COPY`` and ``PSYDUCK_CODE_COPIED_FROM`` tell the worker its tree is
#: a copy, and of what: the files its tests write there are sent home
#: (:mod:`pytest_psyduck.homecoming`).
COPY_CODE = f"""\
import os, shutil, sys
src, root = os.environ.pop("PSYDUCK_CODE_SRC"), os.environ.pop("PSYDUCK_CODE_ROOT")
shutil.copytree(src, root,
                symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*{COPY_SKIP!r}))
os.environ["PSYDUCK_CODE_COPY"] = root
os.environ["PSYDUCK_CODE_COPIED_FROM"] = src
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
"""
