"""What the running kernel says about itself: release, build, compiler (for reports)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from klptrace.kernel import proc


def _groups(text: str) -> tuple[list[str], str]:
    """The top-level parenthesised groups at the start of text, and what follows them."""
    groups: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] == " ":
            i += 1
        if i >= len(text) or text[i] != "(":
            return groups, text[i:]
        depth, start = 0, i
        for j in range(i, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                groups.append(text[start + 1:j])
                i = j + 1
                break
        else:
            return groups, text[start:]


def parse_proc_version(text: str) -> dict[str, str]:
    """release, builder, compiler, linker, build (uname -v) and the Debian package version
    from /proc/version ("Linux version REL (BUILDER) (COMPILER, LINKER) BUILD")."""
    m = re.match(r"^Linux version (\S+)(.*)$", text.strip(), re.DOTALL)
    if not m:
        return {}
    groups, build = _groups(m[2])
    out = {"release": m[1], "build": build.strip()}
    if groups:
        out["builder"] = groups[0]
    if len(groups) > 1:
        tools, depth, cut = groups[1], 0, len(groups[1])
        for k, c in enumerate(tools):  # the first top-level ", " ends the compiler
            depth += {"(": 1, ")": -1}.get(c, 0)
            if depth == 0 and tools.startswith(", ", k):
                cut = k
                break
        out["compiler"] = tools[:cut]
        if cut < len(tools):
            out["linker"] = tools[cut + 2:]
    deb = re.search(r"\bDebian (\d\S*)", build)
    if deb:
        out["debian_version"] = deb[1]
    return out


def running_kernel() -> dict[str, Any]:
    """The running kernel as a report names it: /proc/version's parts and the machine."""
    try:
        with open("/proc/version") as f:
            info: dict[str, Any] = parse_proc_version(f.read())
    except OSError:
        info = {}
    u = os.uname()
    info.setdefault("release", u.release)
    info["arch"] = u.machine
    return info


def process_age_s(stat: str | None = None) -> float:
    """Seconds since this process started (the interpreter's start included), from
    /proc/self/stat's starttime (clock ticks since boot) and CLOCK_BOOTTIME."""
    st = proc.stat() if stat is None else proc.Stat.parse(stat)
    if st is None:
        raise OSError("cannot read /proc/self/stat")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - proc.seconds(st.starttime)
