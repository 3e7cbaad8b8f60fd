"""Loading and unloading modules, and reading livepatch sysfs state.

Module loading goes straight to finit_module(2)/delete_module(2): the
errno is exact and no insmod process is forked per step.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FINIT_MODULE = 313  # x86_64
_SYS_DELETE_MODULE = 176
_O_NONBLOCK = os.O_NONBLOCK
LIVEPATCH_SYSFS = Path("/sys/kernel/livepatch")


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
    """delete_module(name, O_NONBLOCK): 0 or the errno."""
    r = _libc.syscall(_SYS_DELETE_MODULE, name.encode(), _O_NONBLOCK)
    return ctypes.get_errno() if r != 0 else 0


def is_loaded(name: str) -> bool:
    """Whether a module of that name is loaded (any state)."""
    return os.path.exists(f"/sys/module/{name}/initstate") or os.path.exists(
        f"/sys/module/{name}/refcnt")


def loaded_modules() -> list[str]:
    """Names of all loaded modules, from /proc/modules."""
    try:
        with open("/proc/modules") as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def patches() -> list[str]:
    """Livepatches registered with the kernel (/sys/kernel/livepatch/*)."""
    try:
        return sorted(p.name for p in LIVEPATCH_SYSFS.iterdir())
    except OSError:
        return []


def patch_attr(patch: str, attr: str) -> str | None:
    """/sys/kernel/livepatch/<patch>/<attr> (enabled, transition), or None if gone."""
    try:
        return (LIVEPATCH_SYSFS / patch / attr).read_text().strip()
    except OSError:
        return None


def write(path: str, value: str) -> int:
    """Write value to a sysfs file: 0 or the errno."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        os.write(fd, value.encode())
        return 0
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        os.close(fd)
