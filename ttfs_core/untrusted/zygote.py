"""The far side of the sandbox (:mod:`.sandbox`): the zygote, which imports torch and the loaders once and forks
one child per request, and the child, which confines itself (resource limits, no capabilities, a seccomp filter
where available) before it calls the request's function. Nothing here is called by the server's own code: the
zygote is started as ``python -I -B -c "...; zygote_main()"`` and the children are its forks. Also the length-
prefixed framing both sides use, and :class:`Limits`. See :mod:`.sandbox` for the whole design.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PRELOAD = (
    "torch", "torch.fx", "torch.export", "torch._export.serde.serialize", "torch.export.pt2_archive._package",
    "torchvision.models", "sympy", "ttfs_core.untrusted.loader", "ttfs_core.zoo",
)  # fmt: skip
_WARM_UP = ("ttfs_core.untrusted.loader:warm_up",)  # run once in the zygote, on its own data, before it forks
FRAME = struct.Struct(">Q")
"""The length prefix of every message between the caller and the zygote."""
_MAX_REQUEST = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed child."""

    memory_bytes: int = 3 << 30
    """Address space the child may add to what it had after the imports (``RLIMIT_AS``)."""
    cpu_seconds: int = 60
    """CPU time (``RLIMIT_CPU``; ``SIGXCPU`` at this limit, ``SIGKILL`` 2 s later)."""
    wall_seconds: float = 90.0
    """Wall-clock time, enforced by the zygote (and by the caller, plus :data:`.sandbox.GRACE_SECONDS`)."""
    max_output_bytes: int = 3 << 30
    """Largest result the child may hand back."""
    open_files: int = 256
    """``RLIMIT_NOFILE``."""


# --- framing -----------------------------------------------------------------------------------------------


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[: 1 << 24]) :]


def write_frame(fd: int, data: bytes) -> None:
    write_all(fd, FRAME.pack(len(data)))
    write_all(fd, data)


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


def read_exact(fd: int, n: int, deadline: float | None) -> bytes:
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


_PROTO_IN = 0  # the zygote's request and reply pipes (moved off fds 0 and 1 by zygote_main)
_PROTO_OUT = 1


def zygote_main() -> None:
    """Entry point of the zygote: import what the children need, report ready, then serve requests."""
    import warnings

    global _PROTO_IN, _PROTO_OUT
    _PROTO_IN, _PROTO_OUT = os.dup(0), os.dup(1)  # stray prints (fd 1) must not corrupt the protocol
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    warnings.simplefilter("ignore")
    set_dumpable(False)  # the children, which inherit this, must not read our memory either
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
    write_frame(_PROTO_OUT, json.dumps(info).encode())
    while True:
        try:
            (n,) = FRAME.unpack(read_exact(_PROTO_IN, FRAME.size, None))
            if n > _MAX_REQUEST:
                return
            message = json.loads(read_exact(_PROTO_IN, n, None))
        except (EOFError, OSError, ValueError):
            return  # the caller closed our stdin or died
        status, payload = _serve(message)
        try:
            write_frame(_PROTO_OUT, json.dumps(status).encode())
            write_frame(_PROTO_OUT, payload)
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
        write_all(out, result)
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


def set_dumpable(flag: bool) -> None:
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
    and environment despite :func:`set_dumpable`), ``CAP_KILL``, ``CAP_DAC_OVERRIDE`` and the rest. Dropping
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
