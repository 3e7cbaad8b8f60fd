"""`klptrace trace`: record any livepatch's story while a command runs.

The pure part lives here: turning the /dev/kmsg writes that BPF saw (when,
by whom) and the records read back from the log (what) into transcript steps,
and resolving module names the way modprobe does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
from collections.abc import Sequence

from klptrace import leak_expect, ledger
from klptrace.errors import UsageError
from klptrace.events import Event, EventKind
from klptrace.scenario import MODULE_NAME_RULE, is_module_name

# lines a traced script logs that the selftests' expectations carry too
_RESULT = re.compile(r"^(insmod|modprobe|rmmod): ERROR")


#: a module's name as the kernel and modprobe take it (no path, no option-like leading -)
_COMPRESSED = (".ko.xz", ".ko.zst", ".ko.gz")


def module_spec(spec: str) -> str:
    """spec if it names a module as trace takes it, a path to an existing .ko or a module
    name; UsageError otherwise (said before anything looks at the kernel)."""
    if os.sep in spec or spec.endswith((".ko", *_COMPRESSED)):
        if "\0" in spec:  # no file has such a name (os.stat raises ValueError)
            raise UsageError(f"{spec!r} is not a path: it holds a NUL byte",
                             "name the module's .ko file, or the module by its name")
        try:
            st = os.stat(spec)
        except OSError as e:
            raise UsageError(f"no such module file: {spec} ({e.strerror})",
                             "name the module's .ko file, or the module by its name") from None
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{spec} is not a regular file", "name the module's .ko file")
        if not spec.endswith(".ko"):
            raise UsageError(_compressed(spec), _UNCOMPRESS)
        return spec
    if not is_module_name(spec):
        shown = repr(spec if len(spec) <= 60 else spec[:60] + "...")
        raise UsageError(f"{shown} is neither a .ko path nor a module name ({MODULE_NAME_RULE})",
                         "name the module as lsmod shows it, or its .ko file")
    return spec


def _compressed(path: str) -> str:
    return f"{path} is compressed: klptrace reads the callbacks from an uncompressed .ko"


# the loader takes compressed modules; klptrace's ELF reader does not (klptrace/record/elf.py)
_UNCOMPRESS = "decompress a copy (unxz -k, zstd -dk or gunzip -k) and name the .ko"


def resolve_module(spec: str) -> str:
    """A .ko path for a module named by path or by name (as modprobe would find it)."""
    spec = module_spec(spec)
    if spec.endswith(".ko") or os.sep in spec:
        return os.path.abspath(spec)
    try:
        # `--`: the name is never an option of modinfo's, whatever module_spec lets through
        p = subprocess.run(["modinfo", "-n", "--", spec], capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError(f"cannot resolve module {spec}: modinfo is not installed",
                         "name the module by its .ko path, or install kmod") from None
    path = p.stdout.strip()
    if p.returncode == 0 and path.endswith(_COMPRESSED):
        raise UsageError(_compressed(path), _UNCOMPRESS)
    if p.returncode != 0 or not path or not path.endswith(".ko"):
        raise UsageError(f"module {spec} not found for this kernel ({p.stderr.strip()})",
                         "name it by its .ko path")
    return path


@dataclasses.dataclass(frozen=True)
class Shadows:
    """What `trace` tells of the shadow variables it saw: the leak lines (which an
    --expect file states as a scenario's [[shadow_leak]] does), and the problems, each
    leak among them (nobody said it would happen)."""

    ledger: ledger.Ledger
    lines: list[str]
    problems: list[str]


def shadows(events: Sequence[Event]) -> Shadows:
    """The ledger of a trace's events, when it ends (ledger.py)."""
    klp = ledger.of(events)
    return Shadows(klp, leak_expect.leak_lines(klp),
                   [p.text for p in klp.problems] + leak_expect.unexpected([], klp))


@dataclasses.dataclass
class Merged:
    events: list[Event]
    notes: list[str]


def merge_log(events: Sequence[Event], user_lines: Sequence[str]) -> Merged:
    """Give each /dev/kmsg write the text it logged: `% cmd` lines become steps.

    The writes (BPF, in kernel order) and the user records read back from the
    log are in the same order; if their counts differ (a write the kernel
    refused, a log overrun) the pairing is still made in order and said.
    """
    writes = [e for e in events if e.kind == EventKind.KMSG_WRITE]
    notes = []
    if len(writes) != len(user_lines):
        notes.append(f"{len(writes)} writes to /dev/kmsg but {len(user_lines)} user records "
                     "in the log: `%` lines may be misplaced")
    text = {id(w): line for w, line in zip(writes, user_lines, strict=False)}
    out = []
    for e in events:
        if e.kind != EventKind.KMSG_WRITE:
            out.append(e)
            continue
        line = text.get(id(e), "")
        if line.startswith("% "):
            out.append(dataclasses.replace(e, kind=EventKind.STEP, detail=line[2:]))
        elif _RESULT.match(line):
            out.append(dataclasses.replace(e, kind=EventKind.STEP_RESULT, detail=line))
    return Merged(out, notes)

