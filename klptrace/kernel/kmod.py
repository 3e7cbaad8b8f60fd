"""Loading and unloading modules, and reading livepatch sysfs state.

Module loading goes straight to finit_module(2)/delete_module(2): the
errno is exact and no insmod process is forked per step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klptrace.errors import KlptraceError, NotSupported, signals_deferred
from klptrace.kernel import child, kernelfs
from klptrace.kernel.wedge import Wedge
from klptrace.scenario import kernel_name

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FINIT_MODULE = 313  # x86_64
_SYS_DELETE_MODULE = 176
_O_NONBLOCK = os.O_NONBLOCK
LIVEPATCH_SYSFS = Path("/sys/kernel/livepatch")
MODULE_SYSFS = "/sys/module"
PROC_MODULES = "/proc/modules"


def load(path: str, params: str = "") -> int:
    """finit_module(path, params): 0 or the errno."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        r = _libc.syscall(_SYS_FINIT_MODULE, fd, params.encode(), 0)
        return ctypes.get_errno() if r != 0 else 0
    finally:
        os.close(fd)


def unload(name: str) -> int:
    """delete_module(name, O_NONBLOCK): 0 or the errno (name as in <name>.ko)."""
    r = _libc.syscall(_SYS_DELETE_MODULE, kernel_name(name).encode(), _O_NONBLOCK)
    return ctypes.get_errno() if r != 0 else 0


def is_loaded(name: str) -> bool:
    """Whether a module of that name is loaded (any state)."""
    name = kernel_name(name)
    return os.path.exists(f"{MODULE_SYSFS}/{name}/initstate") or os.path.exists(
        f"{MODULE_SYSFS}/{name}/refcnt")


def loaded_modules() -> list[str]:
    """Names of all loaded modules, from /proc/modules."""
    try:
        with open(PROC_MODULES) as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def patches() -> list[str]:
    """Livepatches registered with the kernel (/sys/kernel/livepatch/*)."""
    try:
        return sorted(p.name for p in LIVEPATCH_SYSFS.iterdir())
    except OSError:
        return []


KPROBE_EVENTS = "/sys/kernel/tracing/kprobe_events"


def unsupported(kprobes: bool = True) -> NotSupported | None:
    """Why this machine cannot run klptrace's kernel work (None when it can): root, the
    livepatch core, and (for BPF) kprobe events. The one check run, stall, trace and the
    kernel tests share."""
    if os.geteuid() != 0:
        return NotSupported("klptrace needs root to load BPF programs and modules, and to "
                            "read tasks' kernel stacks", "run it with sudo")
    if not LIVEPATCH_SYSFS.is_dir():
        return NotSupported(
            "this kernel has no livepatch support (/sys/kernel/livepatch is missing)",
            "use a kernel built with CONFIG_LIVEPATCH=y, or `klptrace run --vm`")
    if kprobes and not os.path.exists(KPROBE_EVENTS):
        return NotSupported(f"this kernel has no kprobe events ({KPROBE_EVENTS} is missing)",
                            "use a kernel built with CONFIG_KPROBE_EVENTS=y, or `klptrace run "
                            "--vm`")
    return None


def is_patch(name: str) -> bool:
    """Whether a livepatch of that name is registered (/sys/kernel/livepatch/<name>)."""
    return (LIVEPATCH_SYSFS / kernel_name(name)).is_dir()


def patch_attr(patch: str, attr: str) -> str | None:
    """/sys/kernel/livepatch/<patch>/<attr> (enabled, transition), or None if gone."""
    try:
        return (LIVEPATCH_SYSFS / kernel_name(patch) / attr).read_text().strip()
    except OSError:
        return None


def param(module: str, name: str) -> str | None:
    """/sys/module/<module>/parameters/<name>, or None if it is not there (or unreadable)."""
    try:
        return Path(MODULE_SYSFS, kernel_name(module), "parameters",
                    kernel_name(name)).read_text().strip()
    except OSError:
        return None


def write(path: str, value: str, append: bool = False) -> int:
    """Write value to a kernel file (sysfs, tracefs): 0 or the errno, from
    kernelfs.write(), which refuses any file klptrace has no reason to write."""
    return kernelfs.write(path, value, append)


# --- the kernel actor ------------------------------------------------------------


class Abandoned(KlptraceError):
    """A kernel operation that did not return: klptrace stopped waiting for it."""


#: the operations an Actor performs, by name, and how a shell would say each
_OPS: dict[str, Callable[..., int]] = {"load": load, "unload": unload, "write": write}
_AS_COMMAND: dict[str, Callable[..., str]] = {
    "load": lambda path, params="": f"insmod {path} {params}".strip(),
    "unload": lambda name: f"rmmod {name}",
    "write": lambda path, value: f"echo {value} > {path}",
}


class Actor:
    """Performs the syscalls that can run livepatch code in a child process.

    finit_module() runs a livepatch's init (and with it pre_patch and maybe
    post_patch callbacks), delete_module() and writes to a patch's `enabled`
    take the livepatch core's mutex. A callback that oopses kills the task
    that called it, and a kworker that oopses in a callback dies holding that
    mutex, after which every such syscall sleeps uninterruptibly forever.
    Done by a child, they cannot take klptrace down, and a call that does
    not return is abandoned: the child stays behind in the kernel, klptrace
    goes on (a stuck thread of klptrace's own would keep it from exiting).
    The child is forked before bcc is loaded, so it holds no BPF program.
    Its wedge is where klptrace keeps whether the kernel is wedged: a call
    that never returned, or (noted by whoever sees it) an oops.
    """

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = child.fork(lambda: _serve(req_r, rep_w), keep=(req_r, rep_w))
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self._req = req_w
        self._rep = rep_r
        self._seq = 0
        self._buf = b""
        self.wedge = Wedge()

    def call(self, op: str, *args: str, timeout: float,
             idle: Callable[[], None] = lambda: None) -> int:
        """Perform op(*args) in the child: 0 or the errno.

        Waits at most timeout seconds, calling idle about every 50 ms
        meanwhile (it may raise to stop waiting); raises Abandoned when the
        call does not return in time or an earlier one never did.
        """
        if self.wedge.stuck:
            raise Abandoned(f"`{_AS_COMMAND[op](*args)}` not tried: the kernel never returned "
                            f"from {self.wedge.stuck}", "reboot this machine to clear it")
        self._seq += 1
        seq = self._seq
        what = _AS_COMMAND[op](*args)
        deadline = time.monotonic() + timeout
        # A signal waits until the call has returned, as it would for a syscall of
        # klptrace's own: whoever handles it then sees what the call did (a module it
        # loaded, say). Raised between the request and the reply, it would leave a call
        # in flight that the cleanup cannot see yet (a module not in sysfs so far).
        with signals_deferred():
            try:
                os.write(self._req, (json.dumps([seq, op, *args]) + "\n").encode())
            except OSError:
                self.wedge.never_returned(f"`{what}`")
                raise Abandoned(f"`{what}`: klptrace's kernel actor (pid {self.pid}) is gone",
                                "see the kernel log for an oops") from None
            return self._wait(seq, what, timeout, deadline, idle)

    def _wait(self, seq: int, what: str, timeout: float, deadline: float,
              idle: Callable[[], None]) -> int:
        """The reply to call seq; Abandoned (and the call stuck) when it does not come."""
        try:
            while True:
                reply = self._reply(seq, min(0.05, max(0.0, deadline - time.monotonic())))
                if reply is not None:
                    return reply
                idle()
                if time.monotonic() >= deadline:
                    raise Abandoned(f"`{what}` did not return within {timeout:g} s: it is left "
                                    "waiting in the kernel",
                                    "see the kernel log and `klptrace stall`; a reboot clears it")
        except KeyboardInterrupt:  # Python's own Ctrl-C (no klptrace handler): not stuck
            raise
        except BaseException:
            self.wedge.never_returned(f"`{what}`")
            raise

    def _reply(self, seq: int, wait: float) -> int | None:
        """The errno of call seq once it is in, else None after waiting up to wait seconds."""
        while True:
            line, sep, rest = self._buf.partition(b"\n")
            if sep:
                self._buf = rest
                got_seq, err = json.loads(line)
                if got_seq == seq:
                    return int(err)
                continue  # the reply to a call whose wait was cut short
            ready, _, _ = select.select([self._rep], [], [], wait)
            if not ready:
                return None
            data = os.read(self._rep, 4096)
            if not data:
                raise Abandoned(f"klptrace's kernel actor (pid {self.pid}) died in the kernel",
                                "see the kernel log for an oops")
            self._buf += data
            wait = 0.0

    # what the kernel shows is read here, at once: reading sysfs takes no livepatch lock
    is_loaded = staticmethod(is_loaded)
    is_patch = staticmethod(is_patch)
    patch_attr = staticmethod(patch_attr)
    param = staticmethod(param)

    def load(self, path: str, params: str = "", **kw: Any) -> int:
        return self.call("load", path, params, **kw)

    def unload(self, name: str, **kw: Any) -> int:
        return self.call("unload", name, **kw)

    def write(self, path: str, value: str, **kw: Any) -> int:
        return self.call("write", path, value, **kw)

    def close(self) -> None:
        """Let the child go: it exits once it has read the end of its requests."""
        for fd in (self._req, self._rep):
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self.wedge.stuck:  # a child stuck in the kernel cannot be reaped
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def _serve(req: int, rep: int) -> None:
    """The actor child's loop: one JSON request a line, one [seq, errno] reply a line."""
    with os.fdopen(req, "rb") as requests:
        for line in requests:
            seq, op, *args = json.loads(line)
            err = _OPS[op](*args)
            os.write(rep, (json.dumps([seq, err]) + "\n").encode())
