"""The one writer of kernel files: sysfs, tracefs, debugfs and /proc/sys.

klptrace runs as root, and some of the paths it writes are made of names from
scenario files (a livepatch, a module's parameter). Every write klptrace makes
to the running kernel goes through write(), which takes only the files listed
in WRITABLE, opens them without following a symlink in any component, and
never creates a file.
"""

from __future__ import annotations

import errno
import os
import stat

#: Every kernel file klptrace writes, and why; a "*" stands for one name. None of
#: these paths crosses a symlink on Linux: /sys/kernel/livepatch/<patch> and
#: /sys/module/<module>/parameters are kobject directories (the links in sysfs are
#: elsewhere: holders/, drivers/, /sys/class), and debugfs and tracefs are mounted
#: on their directories, which a lookup crosses without following anything.
WRITABLE: tuple[str, ...] = (
    # a patch's enabled only: never force, which can break the consistency model; and
    # no kernel klptrace supports has a signal (removed by Linux kernel commit
    # 0b3d52790e1c ("livepatch: Remove signal sysfs attribute") (in v5.1))
    "/sys/kernel/livepatch/*/enabled",  # disable steps, and disabling at cleanup (runner)
    "/sys/module/*/parameters/*",  # set steps (runner)
    "/sys/kernel/tracing/kprobe_events",  # klptrace's own kprobe events (probes)
    "/sys/kernel/debug/dynamic_debug/control",  # the livepatch core's pr_debug (kmsg)
    "/proc/sys/kernel/printk_devkmsg",  # step lines in the log past its rate limit (kmsg)
    "/sys/kernel/rcu_expedited",  # quicker probe removal, put back after (probes)
)

# a directory opened only to look up the next name in it, never through a symlink
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def write(path: str, value: str, append: bool = False) -> int:
    """Write value to one of the kernel files in WRITABLE: 0 or the errno.

    EINVAL for a path that is not absolute and normalised, EPERM for one not
    in WRITABLE, ELOOP when a component is a symlink, ENOENT when the file is
    not there. Without append the file is opened as a shell's `>` does
    (O_TRUNC), with it as `>>` does: O_APPEND without seeking, which
    kprobe_events needs (open(..., "a") seeks, and tracefs refuses that).
    """
    parts = _components(path)
    if parts is None:
        return errno.EINVAL
    if not any(_matches(parts, allowed) for allowed in WRITABLE):
        return errno.EPERM
    if parts[-1] == "kprobe_events" and not append:
        # O_TRUNC there removes every kprobe event on the machine, other tools' too
        # (tracefs's probes_open()): klptrace only ever adds and removes its own
        return errno.EINVAL
    flags = os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = _open_nofollow(parts, flags)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        os.write(fd, value.encode())
        return 0
    except OSError as e:
        return e.errno or errno.EIO
    finally:
        os.close(fd)


def _components(path: str) -> list[str] | None:
    """The names in an absolute, normalised path; None for any other (relative, with
    `..`, `.`, `//`, a trailing `/` or a NUL)."""
    if not path.startswith("/") or "\0" in path:
        return None
    parts = path[1:].split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def _matches(parts: list[str], pattern: str) -> bool:
    """Whether the path's names are pattern's, a "*" matching any one name."""
    want = pattern[1:].split("/")
    return len(want) == len(parts) and all(w in ("*", p) for w, p in zip(want, parts, strict=True))


def _open_nofollow(parts: list[str], flags: int) -> int:
    """Open /parts[0]/.../parts[-1] with flags, walking down from / one name at a time
    so that no symlink is followed on the way (O_NOFOLLOW alone covers only the last
    name); never with O_CREAT."""
    fd = os.open("/", _DIR)
    try:
        for name in parts[:-1]:
            try:
                sub = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                err = _symlink_errno(e, name, fd)
                raise OSError(err, os.strerror(err)) from None
            os.close(fd)
            fd = sub
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _symlink_errno(e: OSError, name: str, dir_fd: int) -> int:
    """ELOOP where a directory name is a symlink (O_DIRECTORY reports ENOTDIR), else
    e's errno."""
    if e.errno == errno.ENOTDIR:
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return errno.ELOOP
        except OSError:
            pass
    return e.errno or errno.EIO
