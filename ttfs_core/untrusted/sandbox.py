"""Run a parsing function on untrusted input in a sandboxed child process that hands back only bytes.

Used by :func:`ttfs_core.untrusted.load_model`: a model file is parsed in a child; the child returns plain data
(a JSON description and safetensors bytes) and the caller rebuilds the model from that without running anything
from the file. :func:`run` is the whole interface::

    payload = sandbox.run("ttfs_core.untrusted.loader:sandbox_parse", {"path": "/abs/model.pt2"})

How a request runs (this module is the caller's side; :mod:`.zygote` the zygote's and the child's):

* A *zygote* -- a helper process started once with ``python -I -B`` that imports torch, torchvision and the
  loaders and then waits -- forks one fresh child per request, so a request costs a fork (milliseconds) rather
  than a 2-3 s interpreter start. The zygote never looks at untrusted data: it warms each loader up once on a
  model of its own, then only relays the children's output bytes without parsing them. It stays
  single-threaded (``OMP_NUM_THREADS=1`` etc.), so forking it is safe, and it exits when the caller closes its
  stdin (also when the caller dies). It is started with an environment of its own (:func:`_zygote_env`:
  ``PATH``, locale, thread counts, ``TTFS_SANDBOX_*``), none of the caller's variables, which may hold secrets
  (a child's ``/proc/self/environ`` shows the block its zygote was started with, whatever it does to
  ``os.environ``).
* **Capacity.** At most :data:`MAX_CONCURRENT` requests run at once per caller process (a semaphore), each with
  a zygote of its own; a request that finds no free slot within :data:`BUSY_WAIT_SECONDS` fails with
  ``kind="busy"`` and :data:`BUSY_MESSAGE`. Finished zygotes wait for later requests (at most :data:`MAX_IDLE`,
  not reused after 10 idle minutes), and a zygote is started only when none is idle, so a caller process never
  has more than :data:`MAX_CONCURRENT` zygotes (about 0.7 GiB each) and as many children.
* **The caller and the zygote are non-dumpable** (``PR_SET_DUMPABLE`` 0, set before the first zygote starts):
  their ``/proc/<pid>/mem``, ``environ``, ``maps`` and ``fd`` then need ``CAP_SYS_PTRACE``. Side effects on the
  caller: no core dumps, and a debugger or profiler attaching to it needs that capability too.
* The child, before calling the function: becomes a process-group leader, dies with the zygote
  (``PR_SET_PDEATHSIG``), closes the zygote's pipes to the caller, moves into an empty working folder that the
  caller created and removes afterwards, points ``TMPDIR``/``HOME`` there, and sets resource limits
  (:class:`Limits`): ``RLIMIT_AS`` (``memory_bytes`` more address space than it had after the imports:
  torch's CUDA build alone maps about 3.4 GiB of shared libraries), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` 0 (no file
  can be written; ``SIGXFSZ`` is ignored so writes fail with ``EFBIG``), ``RLIMIT_CORE`` 0 and ``RLIMIT_NOFILE``.
  It then drops every capability -- effective, permitted, inheritable, ambient and the bounding set -- and sets
  ``PR_SET_NO_NEW_PRIVS`` (:func:`_drop_privileges`; the server may run as root), so it can open neither
  ``/proc/<caller>/mem`` or ``environ`` nor the zygote's (``EACCES``), nor another child's.
* Then, where available, a seccomp system-call filter (package ``pyseccomp``, a ctypes binding of the system's
  ``libseccomp.so.2``): opening files for writing/creating/truncating, changing the file system, sockets
  (network), ``execve``/``fork``/non-thread ``clone``, ``ptrace``, signals to any other process (``kill``,
  ``tgkill``, ``rt_[tg]sigqueueinfo`` with another pid, 0 or -1; ``tkill``; every ``pidfd_*`` call, since a
  ``/proc/<pid>`` folder's descriptor is a pidfd too), another process's priority or scheduling, raising
  resource limits, ``io_uring``, ``bpf``, namespaces and mounts fail with ``EPERM``. **Fallback:** if
  ``pyseccomp`` is not installed or ``libseccomp`` is missing (or the kernel refuses the filter), the child runs
  with the resource limits and without capabilities only -- a file can then be created, empty, but nothing
  written into it, and the child can signal processes of the same user, the caller included -- and
  :func:`seccomp_status` says why. The project does not fail without it. ``TTFS_SANDBOX_SECCOMP=0`` in the
  environment turns the filter off (for diagnosis); ``TTFS_SANDBOX_DEBUG=1`` lets the zygote and its children
  print to the caller's stderr.
* The zygote enforces the wall-clock limit (``Limits.wall_seconds``) and an output-size cap, kills the child's
  whole process group in every case, and reports how the child ended; the caller has its own deadline on the
  zygote as well. Every failure -- the function raised, a signal (segfault, ``SIGXCPU``), a timeout, running out
  of memory, too much output -- becomes one :class:`SandboxError` with a one-line message; the caller's process
  keeps running. These messages are fixed texts written by the caller, never the child's: the only text of the
  child's that can reach the user is the message of a refusal (the function raised), and it is replaced by
  :data:`HIDDEN_MESSAGE` unless it is a short line of the characters the loaders' messages use and repeats
  nothing of the caller's environment (:func:`_shown_refusal`).

What this does not cover: the child can still read every file that its user id may read by the permission bits
(as root without capabilities: every file root owns; no Landlock or mount namespace confines it), including
other sessions' uploads in the temporary folder, and other processes' public ``/proc`` entries (``cmdline``,
``stat``). A file that runs code in the child can therefore
read secrets kept in files, though it cannot write, connect or signal (with seccomp) to pass them on; it can
only encode some bits of them in what it returns -- a refusal message that passes the filter, the exit status,
the timing, or the parsed model itself, which the caller validates but shows to the user.

The returned bytes are as untrusted as the input: never unpickle them. POSIX only (``fork``, ``resource``);
``PR_SET_PDEATHSIG`` and seccomp are Linux-only and skipped elsewhere.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .zygote import FRAME, Limits, read_exact, set_dumpable, write_frame

__all__ = [
    "BUSY_MESSAGE", "BUSY_WAIT_SECONDS", "DEFAULT_LIMITS", "HIDDEN_MESSAGE", "MAX_CONCURRENT", "MAX_IDLE", "Limits",
    "SandboxError", "prewarm", "run", "seccomp_status", "shutdown",
]  # fmt: skip

MAX_CONCURRENT = 2
"""Requests (and so zygotes, each holding torch: about 0.7 GiB resident) at once per caller process."""
MAX_IDLE = 2
"""Idle zygotes kept for later requests (at most :data:`MAX_CONCURRENT` exist anyway)."""
BUSY_WAIT_SECONDS = 5.0
"""How long a request waits for one of the :data:`MAX_CONCURRENT` slots before it fails as ``busy``."""
BUSY_MESSAGE = "the server is busy parsing other uploads; try again in a moment"
HIDDEN_MESSAGE = "the sandboxed parser refused the file with a message that cannot be shown"
MAX_MESSAGE_CHARS = 500
"""Longest refusal message of a child that is shown (see :func:`_shown_refusal`)."""
STARTUP_SECONDS = 180.0
"""How long a new zygote may take to import torch and report ready."""
GRACE_SECONDS = 15.0
"""Extra time the caller gives the zygote beyond the child's wall-clock limit before killing the zygote."""
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from ttfs_core.untrusted.zygote import zygote_main; zygote_main()"
)
_MAX_ERROR = 1 << 16  # a child's error report is a short JSON object; anything larger is not parsed
_MESSAGE_CHARS = frozenset(
    string.ascii_letters + string.digits + " .,:;'\"()[]<>=+-*/_%#~?!" + "\u00d7\u2212\u2264\u2265\u2026"
)
"""The characters of a child's refusal message that may be shown: those of the loaders' messages (×, −, ≤, ≥, …)."""
_SECRET_CHARS = 8  # a refusal repeating this many characters of a secret environment value is not shown
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "", "MALLOC_ARENA_MAX": "2", "TORCH_SHOW_CPP_STACKTRACES": "0",
}  # fmt: skip
DEFAULT_LIMITS = Limits()


class SandboxError(Exception):
    """A sandboxed request failed. ``kind``: ``refused`` (the function raised; ``message`` is its message if
    :func:`_shown_refusal` lets it through, else :data:`HIDDEN_MESSAGE`), ``memory``, ``timeout``, ``cpu``,
    ``crash`` (killed by a signal), ``output`` (too large), ``busy`` (:data:`MAX_CONCURRENT` requests already
    running) or ``internal``. Only ``refused`` carries text from the child; the others are fixed messages."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


# --- caller side -------------------------------------------------------------------------------------------


def run(target: str, request: dict[str, Any], limits: Limits | None = None, *, hook: str | None = None) -> bytes:
    """Call ``target(request) -> bytes`` (``"ttfs_core.module:function"``) in a sandboxed child; return its bytes.

    ``request`` must be JSON-serialisable. ``hook`` is for tests only: ``"segfault"``, ``"sleep"``, ``"spin"``
    or ``"allocate"`` makes the child misbehave after its limits are set, instead of calling ``target``.
    Raises :class:`SandboxError`.
    """
    limits = limits or DEFAULT_LIMITS
    if not target.startswith("ttfs_core.") or target.count(":") != 1:
        raise ValueError(f"sandbox targets are ttfs_core functions, got {target!r}")
    if not hasattr(os, "fork"):
        raise SandboxError("sandboxed loading needs a POSIX system (fork and resource limits)", "internal")
    with _slot():
        zygote = _acquire()
        healthy = False
        workdir = tempfile.mkdtemp(prefix="ttfs_sandbox_")  # removed here and, should we die, by the zygote
        try:
            message = {
                "target": target, "request": request, "limits": asdict(limits), "workdir": workdir, "hook": hook,
            }  # fmt: skip
            status, payload = zygote.call(message, limits.wall_seconds + GRACE_SECONDS)
            healthy = True
        finally:
            _release(zygote, healthy)
            shutil.rmtree(workdir, ignore_errors=True)
    return _outcome(status, payload, limits)


def seccomp_status() -> str:
    """``"active"`` if sandboxed children get a seccomp filter, else why not (starts a zygote if none runs)."""
    with _slot():
        zygote = _acquire()
        try:
            return str(zygote.info.get("seccomp", "unknown"))
        finally:
            _release(zygote, True)


def prewarm() -> None:
    """Start a zygote in the background (e.g. when an app starts), so that the first load need not wait the
    2-3 s it takes to import torch; it joins the idle pool when ready. Does nothing if no slot is free."""
    if not _SLOTS.acquire(blocking=False):
        return

    def start() -> None:
        try:
            _release(_Zygote(), True)  # into the pool before the slot is free: never one zygote too many
        except Exception:  # noqa: BLE001 - the first real request will report the problem
            pass
        finally:
            _SLOTS.release()

    threading.Thread(target=start, name="ttfs-sandbox-prewarm", daemon=True).start()


def shutdown() -> None:
    """Stop the idle zygotes (also done at exit)."""
    with _POOL_LOCK:
        idle, _POOL[:] = list(_POOL), []
    for z in idle:
        z.close()


_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT)


@contextlib.contextmanager
def _slot() -> Iterator[None]:
    """Hold one of this process's :data:`MAX_CONCURRENT` request slots; ``busy`` after :data:`BUSY_WAIT_SECONDS`.

    Each request needs a zygote of its own (0.7 GiB) and a child (up to ``Limits.memory_bytes``): without a cap,
    a class uploading at once would start one of each per upload."""
    if not _SLOTS.acquire(timeout=BUSY_WAIT_SECONDS):
        raise SandboxError(BUSY_MESSAGE, "busy")
    try:
        yield
    finally:
        _SLOTS.release()


def _outcome(status: dict[str, Any], payload: bytes, limits: Limits) -> bytes:
    """Turn the zygote's report on the child into the child's bytes or a SandboxError.

    The zygote's report is trusted (it never parses the child's output); of the child's own bytes, only a
    refusal's message can reach the user, through :func:`_shown_refusal`."""
    mib = limits.memory_bytes / (1 << 30)
    if status.get("timeout"):
        raise SandboxError(f"took longer than {limits.wall_seconds:g} s (wall-clock limit)", "timeout")
    if status.get("too_large"):
        raise SandboxError(f"produced more than {limits.max_output_bytes >> 20} MiB of output", "output")
    sig = status.get("signal")
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and status.get("cpu", 0) >= limits.cpu_seconds):
        raise SandboxError(f"used more than {limits.cpu_seconds} s of CPU time", "cpu")
    if payload[:1] == b"E":
        kind, message = _child_error(payload[1:])
        if kind == "memory":
            raise SandboxError(f"needs more than {mib:g} GiB of memory (the sandbox's limit)", "memory")
        if kind == "refused":
            raise SandboxError(_shown_refusal(message), "refused")
        raise SandboxError("the child process reported an unreadable error", "internal")
    if sig is not None:
        name = _signal_name(sig)
        hint = " (possibly out of memory)" if sig in (signal.SIGKILL, signal.SIGABRT) else ""
        raise SandboxError(f"crashed (killed by signal {name}){hint}", "crash")
    if status.get("exit") != 0 or payload[:1] != b"K":
        raise SandboxError(f"ended without a result (exit status {status.get('exit')})", "internal")
    return payload[1:]


def _child_error(data: bytes) -> tuple[str, str]:
    """``(kind, message)`` of a child's error report (``("", "")`` if it is not one that _child writes)."""
    if len(data) > _MAX_ERROR:
        return "", ""
    try:
        err = json.loads(data.decode("utf-8"))
        kind, message = err["kind"], err["message"]
    except (ValueError, KeyError, TypeError):
        return "", ""
    return (kind, message) if isinstance(kind, str) and isinstance(message, str) else ("", "")


def _shown_refusal(message: str, environ: Mapping[str, str] | None = None) -> str:
    """The child's refusal ``message`` (whitespace collapsed) if it may be shown to the user, else
    :data:`HIDDEN_MESSAGE`.

    Once a file runs code in the child, the message is the attacker's channel to the user, so it passes only
    if it looks like one of the loaders' own messages: at most :data:`MAX_MESSAGE_CHARS` characters of
    :data:`_MESSAGE_CHARS`, repeating no 8 characters of a secret of ``environ`` (default: this process's
    environment; a variable whose name says it holds a key, token, password or credential). The child never sees
    the caller's environment: this is the last line should it get a secret anyway. Other variables (paths, the
    test runner's test name) hold the same words as ordinary messages and are not compared."""
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE_CHARS or not set(text) <= _MESSAGE_CHARS:
        return HIDDEN_MESSAGE
    env = os.environ if environ is None else environ
    n = _SECRET_CHARS
    secrets = {v[i : i + n] for k, v in env.items() if _SECRET_NAME.search(k) for i in range(len(v) - n + 1)}
    if any(text[i : i + n] in secrets for i in range(len(text) - n + 1)):
        return HIDDEN_MESSAGE
    return text


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class _Zygote:
    """The caller's handle on one zygote process (requests are serialised by the pool)."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        quiet = os.environ.get("TTFS_SANDBOX_DEBUG", "") in ("", "0")
        set_dumpable(False)  # before the first zygote (and so the first child) exists
        self.owner = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _BOOT, root],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None,
            env=_zygote_env(), close_fds=True, start_new_session=True, cwd="/",
        )  # fmt: skip
        self.idle_since = time.monotonic()
        try:
            self.info = json.loads(self._read_frame(time.monotonic() + STARTUP_SECONDS, 1 << 16))
        except Exception:
            self.close()
            raise

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def call(self, message: dict[str, Any], timeout: float) -> tuple[dict[str, Any], bytes]:
        """Send one request; return the zygote's status report and the child's output."""
        deadline = time.monotonic() + timeout
        try:
            data = json.dumps(message).encode()
            assert self.proc.stdin is not None
            write_frame(self.proc.stdin.fileno(), data)
            status = json.loads(self._read_frame(deadline, 1 << 16))
            payload = self._read_frame(deadline, int(message["limits"]["max_output_bytes"]) + (1 << 20))
        except TimeoutError:
            self.close()
            raise SandboxError(f"took longer than {timeout:g} s (the sandbox did not answer)", "timeout") from None
        except (OSError, EOFError, ValueError) as e:
            self.close()
            raise SandboxError(f"the sandbox process failed ({type(e).__name__}: {e})", "internal") from None
        self.idle_since = time.monotonic()
        return status, payload

    def _read_frame(self, deadline: float, limit: int) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        (n,) = FRAME.unpack(read_exact(fd, FRAME.size, deadline))
        if n > limit:
            raise ValueError(f"frame of {n} bytes exceeds {limit}")
        return read_exact(fd, n, deadline)

    def close(self) -> None:
        """Close the zygote's stdin (it exits); kill it if it does not exit promptly."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _zygote_env() -> dict[str, str]:
    """The zygote's whole environment: ``PATH``, the sandbox's own ``TTFS_SANDBOX_*`` switches and fixed values.

    Nothing else of the caller's environment (it may hold secrets): clearing ``os.environ`` in a child would not
    do, as its ``/proc/self/environ`` shows the block the zygote was started with. ``HOME`` is the temporary
    folder, which exists and is not ours to create or remove (torch imports without writing there)."""
    env = {k: v for k, v in os.environ.items() if k == "PATH" or k.startswith("TTFS_SANDBOX_")}
    env.update(_THREAD_ENV, LANG="C.UTF-8", LC_ALL="C.UTF-8", HOME=tempfile.gettempdir())
    return env


_POOL: list[_Zygote] = []
_POOL_LOCK = threading.Lock()
_IDLE_SECONDS = 600.0


def _acquire() -> _Zygote:
    """An idle zygote of this process, or a new one."""
    stale = []
    found = None
    with _POOL_LOCK:
        while _POOL and found is None:
            z = _POOL.pop()
            fresh = time.monotonic() - z.idle_since < _IDLE_SECONDS
            if z.usable() and fresh:
                found = z
            elif z.owner == os.getpid():
                stale.append(z)
    for z in stale:
        z.close()
    if found is not None:
        return found
    try:
        return _Zygote()
    except (OSError, EOFError, ValueError, TimeoutError) as e:
        raise SandboxError(f"cannot start the sandbox process ({type(e).__name__}: {e})", "internal") from None


def _release(zygote: _Zygote, healthy: bool) -> None:
    if healthy and zygote.usable():
        with _POOL_LOCK:
            if len(_POOL) < MAX_IDLE:
                _POOL.append(zygote)
                return
    zygote.close()


atexit.register(shutdown)
