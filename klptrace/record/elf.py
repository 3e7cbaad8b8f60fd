"""Just enough ELF64 reading for a kernel module (.ko): its name, its functions,
and which of them can be a livepatch callback.

A callback is stored in a struct klp_callbacks (or in a tool's table of them,
such as kpatch's .kpatch.callbacks.* sections), so its address is written
into data: the .ko carries a relocation from a data section to the function's
entry. Only those functions are worth a probe. Symbols that are not function
entries (objtool's __pfx_ padding, gcc's .cold, .part, .isra and .constprop
parts) are never such targets in practice, and the kernel refuses or never
arms a probe on them.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Iterator

from klptrace.errors import KlptraceError

SHT_SYMTAB = 2
SHT_RELA = 4
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
STT_FUNC = 2
STT_SECTION = 3
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

#: e_machine -> the relocation type that stores a symbol's absolute 64-bit address,
#: as a static initializer of a function pointer does
ABS64 = {62: 1,  # EM_X86_64: R_X86_64_64
         183: 257}  # EM_AARCH64: R_AARCH64_ABS64

#: data sections that list code addresses for the kernel's own use (every
#: traced function's padding or ftrace call site), not pointers a callback is
#: called through
CODE_TABLES = frozenset({"__mcount_loc", "__patchable_function_entries"})

#: the module's init and exit: never callbacks
MODULE_ENTRY_POINTS = frozenset({"init_module", "cleanup_module"})

# __pfx_<fn>: the symbol objtool puts on the padding before <fn> (CONFIG_CALL_PADDING;
# the kernel refuses it as notrace); <fn>.cold, .part.N, .isra.N, .constprop.N...: parts
# and clones that gcc makes of <fn>.
_FRAGMENT = re.compile(r"^__pfx_|\.(cold|part|isra|constprop|lto_priv|localalias)(\.\d+)*$")


class ModuleFileError(KlptraceError):
    """A .ko file that cannot be read as a kernel module."""


@dataclasses.dataclass(frozen=True)
class Section:
    """One section header."""

    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


@dataclasses.dataclass(frozen=True)
class Symbol:
    """One .symtab entry."""

    name: str
    value: int
    type: int
    shndx: int


@dataclasses.dataclass(frozen=True)
class ModuleFile:
    """What klptrace needs of a .ko: its name, its functions, the ones to probe."""

    name: str
    #: every function symbol in .text* (including padding and split parts)
    functions: tuple[str, ...]
    #: function entries whose address data holds: the only possible callbacks
    callback_candidates: tuple[str, ...]


def is_fragment(name: str) -> bool:
    """Whether a function symbol names padding or a part of a function, not its entry."""
    return bool(_FRAGMENT.search(name))


def read_module(path: str) -> ModuleFile:
    """The module's name (from .modinfo), its functions and its callback candidates."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModuleFileError(f"cannot read {path}: {e.strerror}") from e
    try:
        return parse(data)
    except (struct.error, ValueError, IndexError) as e:
        raise ModuleFileError(f"{path} is not a valid kernel module: {e}",
                              "pass an uncompressed .ko (unxz a .ko.xz first)") from e


def parse(data: bytes) -> ModuleFile:
    """A ModuleFile from the bytes of a .ko."""
    machine = _machine(data)
    secs = _sections(data)
    syms = _symbols(data, secs)
    name = _modinfo_name(data, secs)
    funcs = [s for s in syms if s.type == STT_FUNC and _in_text(secs, s)]
    targets = pointer_targets(data, secs, syms, machine)
    return ModuleFile(name=name,
                      functions=tuple(sorted({s.name for s in funcs})),
                      callback_candidates=tuple(sorted(_entries_at(funcs, targets))))


def _machine(data: bytes) -> int:
    """e_machine of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    machine: int = struct.unpack_from("<H", data, 0x12)[0]
    return machine


def _sections(data: bytes) -> list[Section]:
    """Every section header, with its name."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = raw[shstrndx][4]
    return [Section(_cstr(data, str_off + n), t, fl, off, size, link, info, es)
            for n, t, fl, _addr, off, size, link, info, _align, es in raw]


def _cstr(data: bytes, off: int) -> str:
    return data[off : data.index(b"\0", off)].decode("ascii", "replace")


def _symbols(data: bytes, secs: list[Section]) -> list[Symbol]:
    """The .symtab entries, in index order (relocations refer to them by index)."""
    tab = next((s for s in secs if s.type == SHT_SYMTAB), None)
    if tab is None:
        raise ValueError("no .symtab (was the module stripped with --strip-all?)")
    str_off = secs[tab.link].offset
    out = []
    for i in range(tab.size // tab.entsize):
        st_name, st_info, _other, shndx, value, _size = struct.unpack_from(
            "<IBBHQQ", data, tab.offset + i * tab.entsize)
        out.append(Symbol(_cstr(data, str_off + st_name) if st_name else "", value,
                          st_info & 0xF, shndx))
    return out


def _modinfo_name(data: bytes, secs: list[Section]) -> str:
    """name= from .modinfo."""
    for s in secs:
        if s.name == ".modinfo":
            for item in data[s.offset : s.offset + s.size].split(b"\0"):
                if item.startswith(b"name="):
                    return item[5:].decode()
    raise ValueError("no name= in .modinfo")


def _in_text(secs: list[Section], sym: Symbol) -> bool:
    """Whether a symbol is in .text* (gcc may use .text.unlikely or .text.hot too)."""
    return (SHN_UNDEF < sym.shndx < min(SHN_LORESERVE, len(secs))
            and secs[sym.shndx].name.startswith(".text"))


def _relocations(data: bytes, sec: Section) -> Iterator[tuple[int, int, int]]:
    """(type, symbol index, addend) of each entry of a SHT_RELA section."""
    for i in range(sec.size // sec.entsize):
        _off, info, addend = struct.unpack_from("<QQq", data, sec.offset + i * sec.entsize)
        yield info & 0xFFFFFFFF, info >> 32, addend


def _is_data(sec: Section) -> bool:
    """A section that is loaded, holds no code, and is not one of the kernel's code tables."""
    return (sec.flags & SHF_ALLOC != 0 and sec.flags & SHF_EXECINSTR == 0
            and sec.name not in CODE_TABLES)


def pointer_targets(data: bytes, secs: list[Section], syms: list[Symbol],
                    machine: int) -> set[tuple[int, int]]:
    """(section index, offset) of each code address that a data section stores."""
    abs64 = ABS64.get(machine)
    if abs64 is None:
        raise ValueError(f"unsupported ELF machine {machine}")
    out: set[tuple[int, int]] = set()
    for rela in secs:
        if rela.type != SHT_RELA or not _is_data(secs[rela.info]):
            continue
        for rtype, symidx, addend in _relocations(data, rela):
            sym = syms[symidx]
            if rtype != abs64 or not SHN_UNDEF < sym.shndx < SHN_LORESERVE:
                continue
            # static functions: the assembler names the section, the addend the place
            base = 0 if sym.type == STT_SECTION else sym.value
            out.add((sym.shndx, base + addend))
    return out


def _entries_at(funcs: list[Symbol], targets: set[tuple[int, int]]) -> set[str]:
    """One name for each function that starts at a target (an entry before its aliases)."""
    by_place: dict[tuple[int, int], list[str]] = {}
    for f in funcs:
        if f.name not in MODULE_ENTRY_POINTS and (f.shndx, f.value) in targets:
            by_place.setdefault((f.shndx, f.value), []).append(f.name)
    return {min(names, key=lambda n: (is_fragment(n), n)) for names in by_place.values()}
