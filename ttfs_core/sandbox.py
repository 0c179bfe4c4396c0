"""Run a parsing function on untrusted input in a sandboxed child process that hands back only bytes.

Used by :func:`ttfs_core.loading.load_model`: a model file is parsed in a child; the child returns plain data
(a JSON description and safetensors bytes) and the caller rebuilds the model from that without running anything
from the file. :func:`run` is the whole interface::

    payload = sandbox.run("ttfs_core.loading:_sandbox_parse", {"path": "/abs/model.pt2"})

How a request runs:

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
  :data:`HIDDEN_MESSAGE` unless it is a short line of the characters loading.py's messages use and repeats
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
import errno
import importlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
_PRELOAD = (
    "torch", "torch.fx", "torch.export", "torch._export.serde.serialize", "torch.export.pt2_archive._package",
    "torchvision.models", "safetensors.torch", "sympy", "ttfs_core.loading", "ttfs_core.zoo",
)  # fmt: skip
_WARM_UP = ("ttfs_core.loading:_warm_up",)  # run once in the zygote, on its own data, before it forks
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from ttfs_core.sandbox import _zygote_main; _zygote_main()"
_HEADER = struct.Struct(">Q")
_MAX_REQUEST = 1 << 20
_MAX_ERROR = 1 << 16  # a child's error report is a short JSON object; anything larger is not parsed
_MESSAGE_CHARS = frozenset(
    string.ascii_letters + string.digits + " .,:;'\"()[]<>=+-*/_%#~?!" + "\u00d7\u2212\u2264\u2265\u2026"
)
"""The characters of a child's refusal message that may be shown: those of loading.py's messages (×, −, ≤, ≥, …)."""
_SECRET_CHARS = 8  # a refusal repeating this many characters of a secret environment value is not shown
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
_THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "", "MALLOC_ARENA_MAX": "2", "TORCH_SHOW_CPP_STACKTRACES": "0",
}  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed child."""

    memory_bytes: int = 3 << 30
    """Address space the child may add to what it had after the imports (``RLIMIT_AS``)."""
    cpu_seconds: int = 60
    """CPU time (``RLIMIT_CPU``; ``SIGXCPU`` at this limit, ``SIGKILL`` 2 s later)."""
    wall_seconds: float = 90.0
    """Wall-clock time, enforced by the zygote (and by the caller, plus :data:`GRACE_SECONDS`)."""
    max_output_bytes: int = 3 << 30
    """Largest result the child may hand back."""
    open_files: int = 256
    """``RLIMIT_NOFILE``."""


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
    if it looks like one of loading.py's own messages: at most :data:`MAX_MESSAGE_CHARS` characters of
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
        root = str(Path(__file__).resolve().parent.parent)
        quiet = os.environ.get("TTFS_SANDBOX_DEBUG", "") in ("", "0")
        _set_dumpable(False)  # before the first zygote (and so the first child) exists
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
            _write_frame(self.proc.stdin.fileno(), data)
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
        (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
        if n > limit:
            raise ValueError(f"frame of {n} bytes exceeds {limit}")
        return _read_exact(fd, n, deadline)

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


# --- framing -----------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: 1 << 24]) :]


def _write_frame(fd: int, data: bytes) -> None:
    _write_all(fd, _HEADER.pack(len(data)))
    _write_all(fd, data)


def _wait_readable(fd: int, deadline: float | None) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        if deadline is None:
            ms = None
        else:
            ms = int((deadline - time.monotonic()) * 1000)
            if ms <= 0:
                raise TimeoutError
        if poller.poll(ms if ms is None else max(ms, 1)):
            return


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """Exactly ``n`` bytes from ``fd`` (EOFError if it closes first, TimeoutError after ``deadline``)."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        _wait_readable(fd, deadline)
        got = os.readv(fd, [view[pos : pos + (1 << 24)]])
        if got == 0:
            raise EOFError("the sandbox process closed its output")
        pos += got
    return bytes(buf)


# --- zygote ------------------------------------------------------------------------------------------------


_PROTO_IN = 0  # the zygote's request and reply pipes (moved off fds 0 and 1 by _zygote_main)
_PROTO_OUT = 1


def _zygote_main() -> None:
    """Entry point of the zygote: import what the children need, report ready, then serve requests."""
    import warnings

    global _PROTO_IN, _PROTO_OUT
    _PROTO_IN, _PROTO_OUT = os.dup(0), os.dup(1)  # stray prints (fd 1) must not corrupt the protocol
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    warnings.simplefilter("ignore")
    _set_dumpable(False)  # the children, which inherit this, must not read our memory either
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a child that needs it reports the failure itself
            pass
    for target in _WARM_UP:
        module_name, func_name = target.split(":")
        try:
            getattr(importlib.import_module(module_name), func_name)()
        except Exception:  # noqa: BLE001 - only a speed-up
            pass
    info = {"ready": True, "seccomp": _seccomp_available(), "threads": _thread_count()}
    _write_frame(_PROTO_OUT, json.dumps(info).encode())
    while True:
        try:
            (n,) = _HEADER.unpack(_read_exact(_PROTO_IN, _HEADER.size, None))
            if n > _MAX_REQUEST:
                return
            message = json.loads(_read_exact(_PROTO_IN, n, None))
        except (EOFError, OSError, ValueError):
            return  # the caller closed our stdin or died
        status, payload = _serve(message)
        try:
            _write_frame(_PROTO_OUT, json.dumps(status).encode())
            _write_frame(_PROTO_OUT, payload)
        except OSError:
            return
        if status.get("orphaned"):
            return


def _thread_count() -> int:
    """Threads of this process (the zygote must stay single-threaded to fork safely)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _serve(message: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Fork a child for one request, collect its output, reap it and kill its process group."""
    limits = Limits(**message["limits"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(r)
            _child(message, limits, w)
        finally:
            os._exit(70)
    os.close(w)
    try:
        os.setpgid(pid, pid)  # also done by the child: whichever runs first
    except OSError:
        pass
    start = time.monotonic()
    try:
        payload, why = _collect(r, start + limits.wall_seconds, limits.max_output_bytes + 1)
    finally:
        os.close(r)
    # At EOF the child is exiting (its output closes when it exits), so this does not change how it ended;
    # otherwise it must stop now. Either way nothing it started survives.
    _killpg(pid)
    code = _reap(pid)
    if Path(message["workdir"]).name.startswith("ttfs_sandbox_"):
        shutil.rmtree(message["workdir"], ignore_errors=True)  # also done by the caller, unless it died meanwhile
    status: dict[str, Any] = {
        "exit": os.WEXITSTATUS(code) if os.WIFEXITED(code) else None,
        "signal": os.WTERMSIG(code) if os.WIFSIGNALED(code) else None,
        "timeout": why == "timeout",
        "too_large": why == "too_large",
        "orphaned": why == "orphaned",
        "cpu": _child_cpu_seconds(),
        "seconds": round(time.monotonic() - start, 3),
    }
    return status, (b"" if why is not None else payload)


_last_children_cpu = 0.0


def _child_cpu_seconds() -> float:
    """CPU seconds used by the child reaped last (the children's total grows by exactly that)."""
    global _last_children_cpu
    t = os.times()
    total = t.children_user + t.children_system
    used, _last_children_cpu = total - _last_children_cpu, total
    return round(used, 2)


def _collect(fd: int, deadline: float, cap: int) -> tuple[bytes, str | None]:
    """Read the child's output until EOF; stop early on timeout, on too much output, or if our caller is gone."""
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    poller.register(_PROTO_IN, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        ms = int((deadline - time.monotonic()) * 1000)
        if ms <= 0:
            return b"", "timeout"
        for ready, _ in poller.poll(ms):
            if ready == _PROTO_IN:
                return b"", "orphaned"  # the caller closed our stdin (exited) mid-request
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                return b"".join(chunks), None
            size += len(chunk)
            if size > cap:
                return b"", "too_large"
            chunks.append(chunk)


def _reap(pid: int) -> int:
    """The child's wait status (it has been killed or is exiting)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- child -------------------------------------------------------------------------------------------------


def _child(message: dict[str, Any], limits: Limits, out: int) -> None:
    """Confine this freshly forked process, run the request and write ``K<bytes>`` or ``E<json>`` to ``out``."""
    os.setpgid(0, 0)
    _die_with_parent()
    for fd in {_PROTO_IN, _PROTO_OUT} - {0, 1, 2}:
        os.close(fd)  # the zygote's pipes to the caller: not for the child
    workdir = message["workdir"]
    os.chdir(workdir)
    os.environ.update({"TMPDIR": workdir, "HOME": workdir, "XDG_CACHE_HOME": workdir})
    tempfile.tempdir = workdir
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _set_limits(limits)
    _drop_privileges()
    _install_seccomp()
    try:
        if message.get("hook"):
            _misbehave(str(message["hook"]), limits)
        module_name, func_name = str(message["target"]).split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        result = b"K" + bytes(func(message["request"]))
    except BaseException as e:  # noqa: BLE001 - everything is reported to the caller as data
        kind = "memory" if _is_out_of_memory(e) else "refused"
        result = b"E" + json.dumps({"kind": kind, "message": str(e) or type(e).__name__}).encode()
    try:
        _write_all(out, result)
    except OSError:
        os._exit(71)
    os._exit(0)


_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _libc() -> Any:
    """The C library (ctypes), on Linux only: None elsewhere, where the prctl-based protections are skipped."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _prctl(option: int, arg: int) -> None:
    """``prctl(option, arg)``; OSError if it fails (nothing on systems without it)."""
    import ctypes

    libc = _libc()
    if libc is not None and libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_dumpable(flag: bool) -> None:
    """Make this process (non-)dumpable. A non-dumpable process's ``/proc/<pid>/mem``, ``environ``, ``maps`` and
    ``fd`` can only be opened with ``CAP_SYS_PTRACE``, which sandboxed children drop (it also means no core
    dumps, and a debugger needs that capability too)."""
    with contextlib.suppress(OSError):  # best effort: the children's lack of capabilities is the other half
        _prctl(_PR_SET_DUMPABLE, int(flag))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if sys.platform.startswith("linux") and os.getppid() == 1:
        os._exit(72)  # the zygote died between fork and prctl


def _drop_privileges() -> None:
    """Give up every capability for good and forbid gaining any (Linux; elsewhere a no-op).

    The server runs as root here, so a child would otherwise keep ``CAP_SYS_PTRACE`` (read the server's memory
    and environment despite :func:`_set_dumpable`), ``CAP_KILL``, ``CAP_DAC_OVERRIDE`` and the rest. Dropping
    the bounding set and ``PR_SET_NO_NEW_PRIVS`` stop an ``execve`` (refused by seccomp anyway) from regaining
    them. Raises OSError if it cannot be done: the child then ends (exit status 70) without running anything.
    """
    import ctypes

    libc = _libc()
    if libc is None:
        return
    for cap in range(_last_cap() + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: then there is nothing to drop
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)  # version, pid 0 (this thread)
    sets = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words, all empty
    if libc.capset(header, sets) != 0:  # ambient capabilities go with the permitted set
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63  # capability numbers beyond the kernel's are refused with EINVAL, which is ignored


def _set_limits(limits: Limits) -> None:
    """Resource limits of this process (they cannot be raised again: soft and hard limits are set)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing a file fails with EFBIG instead of killing us
    mapped = _mapped_bytes()
    settings = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, 0, 0),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 2),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_AS, mapped + limits.memory_bytes, mapped + limits.memory_bytes),
    ]
    for which, soft, hard in settings:
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))


def _mapped_bytes() -> int:
    """This process's current address-space size (VmSize)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 * 4  # a rough upper bound elsewhere


def _is_out_of_memory(e: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means the memory limit was hit."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        text = str(cur)
        if isinstance(cur, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text:
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


def _misbehave(hook: str, limits: Limits) -> None:
    """Test hooks: what a hostile file might make the parser do."""
    if hook == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif hook == "sleep":
        time.sleep(10 * limits.wall_seconds + 60)
    elif hook == "spin":
        while True:
            pass
    elif hook == "allocate":
        bytearray(limits.memory_bytes + (1 << 30))
    raise RuntimeError(f"unknown test hook {hook!r}")


# --- seccomp -----------------------------------------------------------------------------------------------

_DENY = (
    # the file system: only reading is allowed
    "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat",
    "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "truncate",
    "mknod", "mknodat", "utime", "utimes", "utimensat", "futimesat", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "open_by_handle_at", "name_to_handle_at",
    # the network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    # other processes, privileges and kernel interfaces
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "tkill",
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "process_madvise", "process_mrelease", "kcmp",
    "setpriority", "ioprio_set",
    "mount", "umount2", "pivot_root", "chroot", "setns", "unshare", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl",
)  # fmt: skip


def _seccomp_available() -> str:
    if os.environ.get("TTFS_SANDBOX_SECCOMP", "1") == "0":
        return "disabled (TTFS_SANDBOX_SECCOMP=0)"
    try:
        import pyseccomp  # noqa: F401 - the import loads libseccomp
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError/OSError when libseccomp is missing
        return f"unavailable: {type(e).__name__}: {e}"
    if not sys.platform.startswith("linux"):
        return "unavailable: not Linux"
    return "active"


def _install_seccomp() -> None:
    """Load the system-call filter described in the module docstring; skip it if pyseccomp cannot be used."""
    if _seccomp_available() != "active":
        return
    import pyseccomp as sc

    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)

    def rule(action: int, name: str, *args: Any) -> None:
        try:
            f.add_rule(action, name, *args)
        except (OSError, ValueError):
            pass  # no such system call on this architecture

    for name in _DENY:
        rule(deny, name)
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND):
        rule(deny, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        rule(deny, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    rule(sc.ERRNO(errno.ENOSYS), "openat2")  # flags in a struct: cannot be checked, so pretend it does not exist
    rule(sc.ERRNO(errno.ENOSYS), "clone3")  # likewise; glibc falls back to clone for threads
    rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, 0x00010000, 0))  # clone without CLONE_THREAD: a new process
    rule(deny, "setrlimit")  # the limits must stay (a process running as root could raise them)
    rule(deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # prlimit64 with a new limit; reading limits stays allowed
    pid = os.getpid()
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rule(deny, name, sc.Arg(0, sc.NE, pid))  # signals to any other process (kill(0) and kill(-1) included)
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        rule(deny, name, sc.Arg(0, sc.NE, 0))  # another process's scheduling (0: this one): could starve the server
    try:
        f.load()
    except OSError:
        pass  # the kernel refused the filter (e.g. no seccomp support): the resource limits still apply


def _probe(request: dict[str, Any]) -> bytes:
    """Sandbox self-test target: try what a hostile parser might do and report what happened (JSON).

    ``request``: ``path`` (a file to try to write), ``server_pid`` (the caller's pid, whose memory, environment
    and signals must be out of reach) and optionally ``raise`` (a message to raise, to test how it is shown).
    """
    import signal as sig
    import socket

    if "raise" in request:
        raise ValueError(request["raise"])

    def attempt(action: Any) -> str:
        try:
            action()
            return "allowed"
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e.errno))
        except ValueError:  # resource.setrlimit reports EPERM so
            return "EPERM"
        except AttributeError:  # os.pidfd_open and signal.pidfd_send_signal exist on Linux only
            return "unsupported"

    def write() -> None:
        with open(request["path"], "wb") as f:
            f.write(b"x")

    def spawn() -> None:
        subprocess.run(["true"], check=False)

    def read(path: str) -> None:  # opening is what is checked (reading /proc/<pid>/mem at offset 0 fails anyway)
        with open(path, "rb"):
            pass

    def pidfd_signal(pid: int) -> None:
        # a /proc/<pid> directory descriptor is a pidfd too, so blocking pidfd_open alone would not be enough
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            sig.pidfd_send_signal(fd, 0)
        finally:
            os.close(fd)

    zygote = os.getppid()
    report: dict[str, Any] = {
        "write": attempt(write),
        "socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
        "spawn": attempt(spawn),
        "kill_parent": attempt(lambda: os.kill(zygote, 0)),
        "kill_group": attempt(lambda: os.kill(0, 0)),
        "zygote_mem": attempt(lambda: read(f"/proc/{zygote}/mem")),
        "cwd_empty": not os.listdir("."),
        "environ": dict(os.environ),
        "proc_environ": Path("/proc/self/environ").read_bytes().decode("utf-8", "replace"),
        "status": _proc_status("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"),
    }
    if "server_pid" in request:
        server = int(request["server_pid"])
        report.update({
            "server_mem": attempt(lambda: read(f"/proc/{server}/mem")),
            "server_environ": attempt(lambda: read(f"/proc/{server}/environ")),
            "kill_server": attempt(lambda: os.kill(server, 0)),
            "pidfd_open_server": attempt(lambda: os.close(os.pidfd_open(server))),
            "pidfd_signal_server": attempt(lambda: pidfd_signal(server)),
        })  # fmt: skip
    import resource

    report["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    report["raise_limit"] = attempt(lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)))
    return json.dumps(report).encode()


def _proc_status(*fields: str) -> dict[str, str]:
    """Some fields of this process's ``/proc/self/status`` (empty where there is none)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {k: v.strip() for k, v in pairs if k in fields}
