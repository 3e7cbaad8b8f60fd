"""The one reader of /proc/kallsyms: vmlinux's symbols by name, and modules' text.

The compiler takes the livepatch core's globals' addresses from it (root
sees them), `klptrace stall` only which scheduler symbols exist (anyone sees
the names; the addresses read 0 without root), and the recorder the text of
the modules loaded before it started, to name who called a shadow function
(record/callers.py).
"""

from __future__ import annotations

from collections.abc import Iterable

KALLSYMS = "/proc/kallsyms"


def read(path: str = KALLSYMS) -> bytes:
    """The file's text (about 10 MB). OSError when it cannot be read."""
    with open(path, "rb") as f:
        return f.read()


def addresses(names: Iterable[str], path: str = KALLSYMS) -> dict[str, int]:
    """Addresses of the vmlinux symbols among names that the file lists (not a module's,
    whose lines end in a [module] column). OSError when it cannot be read."""
    return addresses_in(read(path), names)


def addresses_in(data: bytes, names: Iterable[str]) -> dict[str, int]:
    """addresses() of text already read."""
    found: dict[str, int] = {}
    for name in names:
        # "ADDR TYPE NAME\n"; a module's lines end in "\t[MODULE]". bytes.find,
        # not a multi-line regex: under emulation that took 1.6 s, this 10 ms.
        needle = b" " + name.encode() + b"\n"
        at = data.find(needle)
        while at >= 0:
            line = data[data.rfind(b"\n", 0, at) + 1:at].split()
            if len(line) == 2 and len(line[1]) == 1:
                found[name] = int(line[0], 16)
                break
            at = data.find(needle, at + 1)
    return found


#: modules in kallsyms that are no module's code: BPF programs, kprobe and ftrace stubs
_NOT_MODULES = ("bpf", "__builtin__kprobes", "__builtin__ftrace")


def module_text_symbols(data: bytes) -> list[tuple[int, str]]:
    """(address, module) of every module text symbol in /proc/kallsyms text.

    Modules' lines ("ADDR t name\\t[module]") follow all of vmlinux's, so only the tail
    from the first "\\t[" is split into lines (the whole file is ~10 MB under emulation).
    """
    at = data.find(b"\t[")
    if at < 0:
        return []
    out = []
    for line in data[data.rfind(b"\n", 0, at) + 1:].splitlines():
        parts = line.split()
        if (len(parts) == 4 and parts[1] in (b"t", b"T") and parts[3].startswith(b"[")
                and parts[3].endswith(b"]")):
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            module = parts[3][1:-1].decode("utf-8", "replace")
            if addr and module not in _NOT_MODULES:
                out.append((addr, module))
    return out
