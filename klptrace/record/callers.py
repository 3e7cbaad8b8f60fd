"""Which module's code called a state or shadow function: its return address, named in
event order.

The BPF side sends the return address with each STATE and SHADOW event, and each
do_init_module event carries the module's text ranges, read from struct module while it
is laid out (bpf/klptrace.bpf.c, module_event). Events are decoded in the order the
kernel sent them, so a module's ranges are known here before any call from it and
forgotten only after its free_module event, which follows its last call: a module unloaded
right after its call (a post_unpatch callback's free, then rmmod) is still named, however
late user space reads the ring buffer. Modules loaded before the recording started sent no
do_init_module event: their text symbols come from a /proc/kallsyms snapshot taken when
the probes were attached (Probes.open), while they were all loaded.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from klptrace.kernel import kallsyms

VMLINUX = "vmlinux"
#: past a snapshot module's last text symbol, how far its code may still reach: the
#: snapshot has no sizes, and a module's last function is assumed shorter than this
LAST_FUNCTION_MAX = 64 * 1024


class Callers:
    """Module text ranges, updated by module events in order; resolve() names an address."""

    def __init__(self, vmlinux: tuple[int, int] | None = None,
                 symbols: Iterable[tuple[int, str]] = ()) -> None:
        """vmlinux: [_stext, _etext); symbols: (address, module) of the text symbols of the
        modules loaded before the recording (a /proc/kallsyms snapshot)."""
        self._vmlinux = vmlinux
        # module -> [start, end) ranges from its do_init_module event (core, init text)
        self._live: dict[str, list[tuple[int, int]]] = {}
        syms = sorted(s for s in symbols if s[0])
        self._sym_addrs = [a for a, _m in syms]
        self._sym_mods = [m for _a, m in syms]
        self._last: dict[str, int] = {}
        for a, m in syms:
            self._last[m] = max(a, self._last.get(m, 0))

    @classmethod
    def snapshot(cls, path: str = kallsyms.KALLSYMS) -> Callers:
        """From /proc/kallsyms now, read once; without it (or without root: addresses read
        0), an empty table that names only modules loaded from now on."""
        try:
            data = kallsyms.read(path)
        except OSError:
            return cls()
        ends = kallsyms.addresses_in(data, ("_stext", "_etext"))
        vmlinux = (ends["_stext"], ends["_etext"]) if len(ends) == 2 else None
        return cls(vmlinux, kallsyms.module_text_symbols(data))

    def loaded(self, module: str, core: tuple[int, int], init: tuple[int, int]) -> None:
        """A module's do_init_module: its core and init text, as (start, size)."""
        self._live[module] = [(start, start + size) for start, size in (core, init)
                              if start and size]

    def init_done(self, module: str) -> None:
        """do_init_module returned: the init text is freed (module_memory_free of the
        init types in do_init_module), its addresses may be reused."""
        ranges = self._live.get(module)
        if ranges:
            self._live[module] = ranges[:1]

    def freed(self, module: str) -> None:
        """free_module: after this no code of the module runs."""
        self._live.pop(module, None)

    def resolve(self, addr: int) -> str:
        """The module whose code holds addr, "vmlinux", or "" when none is known."""
        if not addr:
            return ""
        for module, ranges in self._live.items():
            if any(start <= addr < end for start, end in ranges):
                return module
        if self._vmlinux and self._vmlinux[0] <= addr < self._vmlinux[1]:
            return VMLINUX
        # the nearest snapshot symbol at or below addr: the function addr is in
        i = bisect.bisect_right(self._sym_addrs, addr) - 1
        if i >= 0:
            module = self._sym_mods[i]
            if addr < self._last[module] + LAST_FUNCTION_MAX:
                return module
        return ""
