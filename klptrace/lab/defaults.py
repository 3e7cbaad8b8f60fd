"""The guest's size and patience when nothing else is asked for, and where klptrace's
cache is (the one place they are written: `vm`, `run --vm`, the benchmark and the
tests all take them from here)."""

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from klptrace.errors import KlptraceError

CPUS = 2
MEMORY = "4G"
TIMEOUT_S = 1800.0  # the longest a guest may run

#: the directories klptrace keeps in its cache: kernels and their modules (insmodded as
#: root), build roots (chrooted into), BTF layouts (compiled into BPF), apt's state
SUBDIRS = ("kernels", "modules", "roots", "layout", "apt")


def cache_dir() -> Path:
    """klptrace's cache: $KLPTRACE_CACHE, else ~/.cache/klptrace. Made if missing;
    refused (KlptraceError) when anyone but this user or root could write it."""
    env = os.environ.get("KLPTRACE_CACHE")
    path = Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "klptrace"
    _make(path)
    for d in (path, *(path / s for s in SUBDIRS)):
        _check_private(d, path)
    return path


def _make(path: Path) -> None:
    """Make path and its missing parents, none writable by group or others (whatever
    the umask). A directory made meanwhile by someone else is caught by the check."""
    missing = []
    d = path
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    try:
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o755)
    except OSError as e:
        raise KlptraceError(f"cannot make klptrace's cache {path}: {e.strerror}",
                            "point KLPTRACE_CACHE at a directory you can write") from None


def _check_private(d: Path, cache: Path) -> None:
    """Refuse d (the cache or one of its directories) when another user could write it:
    kernels and modules from there are booted and loaded as root."""
    try:
        st = d.stat()
    except FileNotFoundError:
        return  # made later, by klptrace, in a directory that passed
    except OSError as e:
        raise KlptraceError(f"cannot use klptrace's cache: {d}: {e.strerror}",
                            "point KLPTRACE_CACHE at a directory of your own") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KlptraceError(f"klptrace's cache: {d} is not a directory",
                            "remove it, or point KLPTRACE_CACHE elsewhere")
    euid = os.geteuid()
    if st.st_uid not in (euid, 0) and not _in_lab_guest():
        raise KlptraceError(
            f"klptrace's cache {d} belongs to uid {st.st_uid}, not to uid {euid} who runs "
            "klptrace: its owner could change what klptrace loads",
            f"chown -R {euid} {cache}, or point KLPTRACE_CACHE at a directory of your own "
            "(sudo -E passes on KLPTRACE_CACHE)")
    writers = " and ".join(who for who, bit in (("its group", stat.S_IWGRP),
                                                ("others", stat.S_IWOTH)) if st.st_mode & bit)
    if writers:
        raise KlptraceError(
            f"klptrace's cache {d} is writable by {writers}: they could change what "
            "klptrace loads",
            f"chmod go-w {d}, or point KLPTRACE_CACHE at a directory only you can write")


def _in_lab_guest(cmdline: str = "/proc/cmdline") -> bool:
    """Whether this is klptrace's lab guest (vng runs its command from the kernel's
    command line). There the cache is the host's, shared over 9p with its owner's
    uid: the user who runs the guest, and whose power the guest's root has anyway."""
    try:
        with open(cmdline) as f:
            return any(w.startswith("virtme.exec=") for w in f.read().split())
    except OSError:
        return False


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold directory/.lock for the block: one klptrace at a time works in directory.
    The lock file is made private, and a symlink there is not followed."""
    path = directory / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise KlptraceError(f"cannot open the cache's lock {path}: {e.strerror}",
                            f"remove {path} (it must be a plain file)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
