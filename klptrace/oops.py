"""An oops or panic in the kernel log: where it starts and ends, what names it (pure)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

# The line __die() prints (arch/x86/kernel/dumpstack.c): "Oops: 0002 [#1] PREEMPT SMP NOPTI",
# "general protection fault, ...: 0000 [#1] ...", "invalid opcode: 0000 [#1] ..."
_DIE = re.compile(r"^[\w ,:-]*: [0-9a-f]{4} \[#\d+\]")
_OOPS_START = re.compile(r"^(BUG: |kernel BUG at |Kernel panic - not syncing)")
# what names the oops: the task (lib/dump_stack.c; "UID: n" since v6.10) and where
_OOPS_KEY = re.compile(r"^(BUG: |kernel BUG at |Kernel panic - not syncing|CPU: \d+ .*PID: \d+ "
                       r"Comm: |RIP: [0-9a-f]{4}:[\w.]+\+0x)")  # a kernel RIP names a function
_OOPS_END = re.compile(r"^---\[ end (trace|Kernel panic)")


@dataclasses.dataclass
class Oops:
    """An oops (or panic) in the kernel log: its first lines and whether it was all read."""

    lines: list[str]
    complete: bool

    @property
    def summary(self) -> list[str]:
        """The lines that say what and where: the BUG, the die line, the task, the RIP."""
        return [line for line in self.lines if _OOPS_KEY.match(line) or _DIE.match(line)][:6]


def find_oops(messages: Sequence[str]) -> Oops | None:
    """The first oops or panic among kernel log messages (kernel facility), if any.

    It starts at a "BUG:" / "kernel BUG at" / panic line or at __die()'s
    "...: 0000 [#1]" line and ends at the "---[ end trace" marker the kernel
    prints when the oops handler is done (oops_exit()).
    """
    start = next((i for i, m in enumerate(messages) if _OOPS_START.match(m) or _DIE.match(m)),
                 None)
    if start is None:
        return None
    block = list(messages[start:])
    end = next((i for i, m in enumerate(block) if _OOPS_END.match(m)), None)
    if end is not None:
        return Oops(block[:end + 1], True)
    return Oops(block, False)
