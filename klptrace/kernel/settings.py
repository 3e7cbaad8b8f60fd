"""Kernel settings that klptrace changes while it runs, and puts back after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from klptrace.errors import signals_deferred
from klptrace.kernel import kernelfs


@contextlib.contextmanager
def changed(path: str, old: str, new: str) -> Iterator[bool]:
    """Write new to the file at path if it reads old, and old back after the block.

    Any other value, or a file that cannot be read or written (locked on the
    command line, absent, not one kernelfs lets klptrace write), is left as it
    is. Yields whether it was changed. The put-back is not cut short by SIGINT
    or SIGTERM.
    """
    try:
        with open(path) as f:
            was = f.read().strip()
    except OSError:
        was = ""
    if was == old and kernelfs.write(path, new):
        was = ""
    try:
        yield was == old
    finally:
        if was == old:
            with signals_deferred():
                kernelfs.write(path, old)
