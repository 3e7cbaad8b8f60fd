"""The one reader of /proc/<pid>/stat: a process's state, group and times.

The comm field (in parentheses) may hold spaces and ")" itself, so the fields
are counted from the last ")" (proc_pid_stat(5)). Reading /proc needs no
privilege and knows nothing of livepatch: lab/ uses it to find the guest's
processes, sysinfo and bench/ for times.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

PROC = Path("/proc")


@dataclasses.dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat that klptrace reads (times in clock ticks)."""

    state: str
    ppid: int
    pgrp: int
    utime: int
    stime: int
    starttime: int
    flags: int = 0  # PF_* (include/linux/sched.h): PF_KTHREAD for a kernel thread

    @staticmethod
    def parse(text: str) -> Stat:
        """The fields of stat text; ValueError when it is not stat text."""
        if ")" not in text:
            raise ValueError("no comm field")
        f = text[text.rindex(")") + 2:].split()  # f[0] is field 3, state
        if len(f) < 20:
            raise ValueError(f"{len(f) + 2} fields, fewer than 22")
        return Stat(f[0], int(f[1]), int(f[2]), int(f[11]), int(f[12]), int(f[19]), int(f[6]))


def stat(pid: int | str = "self") -> Stat | None:
    """A process's /proc/<pid>/stat; None when it is gone (or unreadable)."""
    try:
        return Stat.parse((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def pids() -> list[int]:
    """The processes that exist now."""
    return [int(e.name) for e in os.scandir(PROC) if e.name.isdigit()]


def seconds(ticks: int) -> float:
    """Clock ticks (the unit of stat's times) in seconds."""
    return ticks / os.sysconf("SC_CLK_TCK")
