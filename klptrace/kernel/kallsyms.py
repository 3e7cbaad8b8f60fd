"""The one reader of /proc/kallsyms: vmlinux's symbols by name.

The compiler takes the livepatch core's globals' addresses from it (root
sees them), `klptrace stall` only which scheduler symbols exist (anyone sees
the names; the addresses read 0 without root).
"""

from __future__ import annotations

from collections.abc import Iterable

KALLSYMS = "/proc/kallsyms"


def addresses(names: Iterable[str], path: str = KALLSYMS) -> dict[str, int]:
    """Addresses of the vmlinux symbols among names that the file lists (not a module's,
    whose lines end in a [module] column). OSError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
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
