"""Just enough ELF64 reading for a kernel module (.ko): its name and functions."""

from __future__ import annotations

import struct

from klptrace.errors import KlptraceError


class ModuleFileError(KlptraceError):
    """A .ko file that cannot be read as a kernel module."""


def _sections(data: bytes) -> list[tuple[str, int, int, int, int, int]]:
    """(name, type, offset, size, link, entsize) of each section."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ModuleFileError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = []
    for i in range(shnum):
        name, typ, _flags, _addr, off, size, link, _info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, shoff + i * shentsize
        )
        raw.append((name, typ, off, size, link, entsize))
    str_off = raw[shstrndx][2]
    return [(_cstr(data, str_off + n), t, o, s, lk, es) for n, t, o, s, lk, es in raw]


def _cstr(data: bytes, off: int) -> str:
    return data[off : data.index(b"\0", off)].decode("ascii", "replace")


def read_module(path: str) -> tuple[str, list[str]]:
    """The module name (from .modinfo) and the names of its functions in .text*."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModuleFileError(f"cannot read {path}: {e.strerror}") from e
    try:
        return _read(data)
    except (struct.error, ValueError, IndexError) as e:
        raise ModuleFileError(f"{path} is not a valid kernel module: {e}") from e


def _read(data: bytes) -> tuple[str, list[str]]:
    secs = _sections(data)
    name = ""
    for sname, _t, off, size, _lk, _es in secs:
        if sname == ".modinfo":
            for item in data[off : off + size].split(b"\0"):
                if item.startswith(b"name="):
                    name = item[5:].decode()
    funcs: set[str] = set()
    for _sname, typ, off, size, link, entsize in secs:
        if typ != 2:  # SHT_SYMTAB
            continue
        str_off = secs[link][2]
        for i in range(size // entsize):
            st_name, st_info, _other, shndx = struct.unpack_from("<IBBH", data, off + i * entsize)
            if st_info & 0xF != 2 or not st_name or shndx >= len(secs):  # STT_FUNC
                continue
            # gcc may put a function in .text.unlikely or .text.startup
            if secs[shndx][0].startswith(".text"):
                funcs.add(_cstr(data, str_off + st_name))
    if not name:
        raise ValueError("no name= in .modinfo")
    return name, sorted(funcs)
