"""A user's files: read what klptrace is given, write what it produces, with named errors.

A file that cannot be read at all (missing, a directory, no permission) is a usage error
(exit 2); a file that is read but is not text is the caller's kind of error (exit 1, like a
file that is not JSON or not TOML). Writes that fail keep the output in a spare file.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from klptrace.errors import KlptraceError, UsageError


class NotText(KlptraceError):
    """A file that was read but is not UTF-8 text (a binary file, another encoding)."""


def special_file(path: Path) -> str:
    """Why path is not a regular file to read ('' when it is one).

    Said before opening it: reading a FIFO would block until someone writes to it.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is a broken symbolic link" if path.is_symlink() else "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, a socket or a device)"
    return ""


#: the most klptrace reads of one file: a saved run of every scenario on several kernels
#: is a few MiB, and /dev/stdin or a FIFO may never end
MAX_READ = 256 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


def read_text(path: str | Path, error: type[KlptraceError] = NotText, hint: str | None = None,
              limit: int | None = None) -> str:
    """The UTF-8 text of a regular file or a pipe (a leading BOM dropped); UsageError (with
    hint) if it cannot be read or is something else, error if it is not text or larger
    than limit bytes (MAX_READ)."""
    limit = MAX_READ if limit is None else limit
    try:
        # refused before opening: opening a device can do something (a tape rewinds)
        why = _not_readable(os.stat(path).st_mode)
        if why:
            raise UsageError(f"cannot read {path}: {why}", hint)
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as f:
            why = _not_readable(os.fstat(fd).st_mode)  # replaced since os.stat()
            if why:
                raise UsageError(f"cannot read {path}: {why}", hint)
            data = _read_at_most(f, limit + 1)  # one more than allowed tells a file too large
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}", hint) from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes (the most klptrace reads)",
                    "is it the right file?")
    start = len(_BOM) if data.startswith(_BOM) else 0  # Windows editors write one
    try:
        return data[start:].decode()
    except UnicodeDecodeError as e:
        at = start + e.start
        raise error(f"{path}: not UTF-8 text (byte {data[at]:#04x} at offset {at})",
                    "is it the right file? klptrace reads UTF-8 text (JSON, TOML)") from None


def _not_readable(mode: int) -> str:
    """Why a file of this mode is not read ('' for a regular file or a pipe)."""
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "Is a directory"
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return f"it is {kind}, not a regular file or a pipe"


def _read_at_most(f: BinaryIO, n: int) -> bytes:
    """Up to n bytes of f, read a MiB at a time (memory grows with what is there)."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def output_problem(path: str | Path) -> str:
    """Why an output file could not be written ('' when it looks writable), said before a run."""
    p = Path(path)
    parent = p.parent
    if p.is_dir():
        return f"{p} is a directory: name a file in it, e.g. {p / 'results.json'}"
    if not parent.exists():
        return f"directory {parent} does not exist: create it first"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if p.exists():
        if not os.access(p, os.W_OK):
            return f"{p} is not writable"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create files in {parent} (no permission)"
    return ""


def write_text(path: str | Path, text: str) -> None:
    """Write text to path; if that fails, keep it in a spare file and say where."""
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        kept = _keep(text, Path(path).suffix)
        hint = (f"the output is in {kept} instead" if kept
                else "the output is lost: make room, or choose another file")
        raise KlptraceError(f"cannot write {path}: {e.strerror}", hint) from None


def _keep(text: str, suffix: str) -> str:
    """A spare copy of text in the temporary directory; '' if that fails too."""
    try:
        fd, name = tempfile.mkstemp(prefix="klptrace-output-", suffix=suffix)
    except OSError:
        return ""
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        os.unlink(name)
        return ""
    return name


def write_stdout(text: str) -> None:
    """Write text to the standard output; a named error if it cannot take it (a full disk)."""
    if sys.stdout is None:  # started with the descriptor closed (`>&-`)
        raise KlptraceError("cannot write the standard output: it is closed",
                            "write to a file with -o FILE")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:  # a full disk, a closed pipe (`| head`)
        discard_stdout()
        raise KlptraceError(f"cannot write the standard output: {e.strerror}",
                            "write to a file with -o FILE") from None


def discard_stdout() -> None:
    """Send what is still buffered for the standard output nowhere.

    Otherwise the interpreter tries again at exit and prints its own message.
    """
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # not a real file (a test's capture): nothing is left to fail at exit
