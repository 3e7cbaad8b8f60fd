"""Scenarios are data: one TOML file each, with a doc, steps and the expected
transcript. This module loads and validates them; runner.py executes them.

A scenario file is untrusted input: it names the modules klptrace loads and the
sysfs files it writes, as root. So one strict schema is applied before anything
runs: module, livepatch and parameter names are the kernel's kind of names (they
become parts of paths), ids are kebab-case (they become arguments and test
names), every value has exactly its type, and size and nesting are bounded. Each
error names the file, the line (found in the text: tomllib gives no positions)
and the key.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
from pathlib import Path
from typing import Any

from klptrace import files, leak_expect, stall_expect
from klptrace.errors import KlptraceError, UsageError
from klptrace.events import Reason
from klptrace.scenario_text import Where as _Where
from klptrace.scenario_text import control as _control
from klptrace.scenario_text import layout as _layout
from klptrace.scenario_text import path_text as _path
from klptrace.scenario_text import quoted as _quoted
from klptrace.scenario_text import type_name as _type
from klptrace.stall_expect import ExpectedStall
from klptrace.transcript import parse_expectation

BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"


class StepKind(enum.StrEnum):
    """What a step does: the key that names its action in a scenario file."""

    LOAD = "load"
    UNLOAD = "unload"
    DISABLE = "disable"
    SET = "set"
    WAIT_TRANSITION = "wait_transition"
    SPAWN = "spawn"  # start a reader of a module's debugfs file in the background
    REAP = "reap"  # wait for that reader to exit
    WAIT_PARAM = "wait_param"  # until a module parameter reads a value
    WAIT_BLOCKED = "wait_blocked"  # until a try finds a task not switched


#: what one step may hold beside its action (the key naming its kind): key -> required
STEP_KINDS: dict[StepKind, dict[str, bool]] = {
    StepKind.LOAD: {"params": False, "wait": False},
    StepKind.UNLOAD: {},
    StepKind.DISABLE: {"wait": False},
    StepKind.SET: {"param": True, "value": True},
    StepKind.WAIT_TRANSITION: {"transition": True},
    StepKind.SPAWN: {"read": True},
    StepKind.REAP: {},
    StepKind.WAIT_PARAM: {"param": True, "value": True},
    StepKind.WAIT_BLOCKED: {"task": True, "try": False},
}
#: the steps whose name is a module's, a reader's; the others name a livepatch
_MODULE_STEPS = (StepKind.LOAD, StepKind.UNLOAD, StepKind.SET, StepKind.WAIT_PARAM)
_READER_STEPS = (StepKind.SPAWN, StepKind.REAP)
TOP_KEYS = ("id", "title", "doc", "livepatches", "replaces_all", "steps", "expect", "stall",
            "shadow_leak")
MAX_STALLS = 64
#: a reader's name: a shell variable's (the transcript says `reader=$!`)
READER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
#: a debugfs file of a module: <module>/<file>, one name each
_READ = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_-]*)/([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")

MAX_FILE_BYTES = 1 << 20
#: a scenario nests two deep (steps = [{ ... }]); tomllib recurses, and fails near 500
MAX_DEPTH = 32
MAX_STEPS = 256
MAX_EXPECT_LINES = 4096
MAX_LIVEPATCHES = 64
MAX_ID = 64
MAX_TITLE = 200
#: the kernel's MODULE_NAME_LEN (56) holds the name and its NUL
MAX_MODULE_NAME = 55
MAX_PARAM_NAME = 64
MAX_PARAM_TEXT = 1024

ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
#: the kernel's module names (it treats - and _ alike); with no / or . they stay
#: one path component, and with no leading - they are never an option
MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

HINT = ("a scenario file is described in docs/scenarios.md; "
        "klptrace/scenarios/ holds examples")
#: what is_module_name() takes, as a hint says it
MODULE_NAME_RULE = (f"letters, digits, _ and -, at most {MAX_MODULE_NAME} characters, not "
                    "starting with -")
_MODULE_HINT = (f"a module or livepatch name is the kernel's: {MODULE_NAME_RULE} "
                "(MODDIR/<name>.ko without .ko)")


class ScenarioError(KlptraceError):
    """A scenario file that is not valid."""

    def __init__(self, message: str, hint: str | None = HINT) -> None:
        super().__init__(message, hint)


def is_module_name(name: str) -> bool:
    """Whether name is a module (or livepatch) name the kernel could have."""
    return len(name) <= MAX_MODULE_NAME and MODULE_NAME.fullmatch(name) is not None


def kernel_name(module: str) -> str:
    """The kernel's name of the module in <module>.ko: kbuild's KBUILD_MODNAME turns - into
    _ (kpatch's livepatch-foo.ko is livepatch_foo), which delete_module(2) and sysfs use."""
    return module.replace("-", "_")


def is_param_name(name: str) -> bool:
    """Whether name is a module parameter's name (a file in /sys/module/<m>/parameters)."""
    return len(name) <= MAX_PARAM_NAME and PARAM_NAME.fullmatch(name) is not None


@dataclasses.dataclass(frozen=True)
class Step:
    """One action on the kernel."""

    kind: StepKind
    module: str = ""
    patch: str = ""
    params: str = ""
    param: str = ""
    value: str = ""
    wait: bool = True
    transition: int = 0
    reader: str = ""  # spawn, reap: the reader's name
    read: str = ""  # spawn: <module>/<file> under /sys/kernel/debug
    task: str = ""  # wait_blocked: the task's comm
    at_try: int = 0  # wait_blocked: a try numbered at least this (0: any try)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A named sequence of steps and the transcript the kernel must produce."""

    id: str
    title: str
    doc: str
    steps: tuple[Step, ...]
    expect: tuple[str, ...]
    livepatches: tuple[str, ...]  # modules whose callbacks must be traced
    path: str = ""
    #: the scenario replaces every enabled livepatch (atomic replace)
    replaces_all: bool = False
    #: the stalls it causes on purpose (their lines end expect)
    stalls: tuple[ExpectedStall, ...] = ()
    leaks: tuple[leak_expect.ExpectedLeak, ...] = ()  # the shadow variables it leaks on purpose

    @property
    def modules(self) -> list[str]:
        """Every module the scenario loads, in order of first load."""
        seen: list[str] = []
        for s in self.steps:
            if s.kind == StepKind.LOAD and s.module not in seen:
                seen.append(s.module)
        return seen


# --- the schema -----------------------------------------------------------------------------


def _text(raw: dict[str, Any], key: str, where: str, *, lines: bool, limit: int = 0) -> str:
    """A top-level string: present, not blank, no control characters (but newlines and tabs
    where it holds lines), at most limit characters."""
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "it is missing" if value is None else f"not {_type(value)}"
        raise ScenarioError(f"{where}: needs a non-empty string `{key}` ({got})")
    bad = _control(value, "\n\t" if lines else "")
    if bad:
        raise ScenarioError(f"{where}: `{key}` holds the control character {_quoted(bad)}"
                            + ("" if lines else " (it is one line)"))
    if limit and len(value.strip()) > limit:
        raise ScenarioError(f"{where}: `{key}` is longer than {limit} characters")
    return value


def _name(value: Any, what: str, where: str) -> str:
    """A module or livepatch name."""
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: {what} must be a string (a module name), "
                            f"not {_type(value)}")
    if not is_module_name(value):
        why = (f"is {len(value)} characters, longer than a module name can be"
               if MODULE_NAME.fullmatch(value) else "is not a module name")
        raise ScenarioError(f"{where}: {what} {_quoted(value)} {why}", _MODULE_HINT)
    return value


def _param_text(value: Any, what: str, where: str) -> str:
    """A parameter's value, or an insmod parameter string: one line, bounded."""
    if type(value) is int:  # value = -19 reads as "-19"; a bool is not an int here
        if not -2**63 <= value < 2**64:
            raise ScenarioError(f"{where}: {what} is an integer out of range")
        value = str(value)
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: {what} must be a string, not {_type(value)}")
    bad = _control(value)
    if bad:
        raise ScenarioError(f"{where}: {what} holds the control character {_quoted(bad)}",
                            "a parameter's value is one line of printable text")
    if len(value) > MAX_PARAM_TEXT:
        raise ScenarioError(f"{where}: {what} is longer than {MAX_PARAM_TEXT} characters")
    return value


def _params(value: Any, where: str) -> str:
    """An insmod parameter string: name=value pairs (or a bare name) separated by spaces,
    values maybe in double quotes, as the kernel's parse_args() splits them."""
    text = _param_text(value, "params", where)
    if text.count('"') % 2:
        raise ScenarioError(f"{where}: params has an unclosed double quote")
    for arg in re.findall(r'(?:[^\s"]|"[^"]*")+', text):
        name = arg.lstrip('"').split("=", 1)[0]
        if not is_param_name(name):
            raise ScenarioError(
                f"{where}: params: {_quoted(name)} is not a parameter name",
                "params holds name=value pairs separated by spaces; a name is letters, "
                f"digits, _ and -, at most {MAX_PARAM_NAME} characters, not starting with "
                "a digit or -")
    return text


def _step(raw: Any, i: int, where: _Where) -> Step:
    """steps[i]."""
    at = f"{where.step(i)}: steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{at}: a step must be a table, e.g. {{ load = \"klptrace_target\" }}, "
                            f"not {_type(raw)}")
    kinds = [k for k in raw if k in STEP_KINDS]
    expected = list(STEP_KINDS[kinds[0]]) if len(kinds) == 1 else []
    for key in raw:
        if key not in STEP_KINDS and key not in expected:
            at = f"{where.step(i, key)}: steps[{i}]"
            if len(kinds) == 1:
                raise ScenarioError(
                    f"{at}: unknown key {_quoted(key)} for a {kinds[0]} step "
                    f"(expected one of {', '.join([kinds[0], *expected])})")
            raise ScenarioError(
                f"{at}: unknown key {_quoted(key)} (expected one of {', '.join(STEP_KINDS)})",
                f"a step needs exactly one of the actions {', '.join(STEP_KINDS)}")
    if len(kinds) != 1:
        raise ScenarioError(f"{at}: a step needs exactly one of the actions "
                            f"{', '.join(STEP_KINDS)}, not {' and '.join(kinds) or 'none'}")
    kind = StepKind(kinds[0])
    missing = [k for k, required in STEP_KINDS[kind].items() if required and k not in raw]
    if missing:
        raise ScenarioError(f"{at}: a {kind} step needs {', '.join(missing)}")
    fields: dict[str, Any] = {}
    if kind in _READER_STEPS:
        name = fields["reader"] = _pattern(raw[kind], READER, kind,
                                           f"{where.step(i, kind)}: steps[{i}]",
                                           "a reader's name is a shell variable's")
    else:
        name = _name(raw[kind], kind, f"{where.step(i, kind)}: steps[{i}]")
        fields["module" if kind in _MODULE_STEPS else "patch"] = name
    for key, value in raw.items():
        here = f"{where.step(i, key)}: steps[{i}]"
        if key == "read":
            fields[key] = _pattern(value, _READ, key, here,
                                   "read names a debugfs file of a module the scenario loads: "
                                   "<module>/<file>")
        elif key == "task":
            fields[key] = _pattern(value, stall_expect.TASK, key, here,
                                   "a task is named by its comm: at most 15 letters, digits, "
                                   "_, . and -")
        elif key == "try":
            if type(value) is not int or not 1 <= value <= 1_000_000:
                raise ScenarioError(f"{here}: try must be an integer from 1 to 1000000")
            fields["at_try"] = value
        elif key == "params":
            fields[key] = _params(value, here)
        elif key == "param":
            if not isinstance(value, str) or not is_param_name(value):
                shown = _quoted(value) if isinstance(value, str) else _type(value)
                raise ScenarioError(
                    f"{here}: param {shown} is not a parameter name",
                    f"param names a file in /sys/module/{name}/parameters: letters, digits, "
                    f"_ and -, at most {MAX_PARAM_NAME} characters")
            fields[key] = value
        elif key == "value":
            fields[key] = _param_text(value, "value", here)
        elif key == "wait":
            if not isinstance(value, bool):
                raise ScenarioError(f"{here}: wait must be true or false, not {_type(value)}")
            fields[key] = value
        elif key == "transition":
            if type(value) is not int or value not in (0, 1):
                # str() of a 5,000-digit integer raises: only a short one is shown
                got = str(value) if type(value) is int and abs(value) < 10**6 else _type(value)
                raise ScenarioError(f"{here}: transition must be the integer 0 or 1, "
                                    f"not {got}")
            fields[key] = value
    return Step(kind=kind, **fields)


def _pattern(value: Any, rx: re.Pattern[str], what: str, where: str, hint: str) -> str:
    """A string value that rx matches whole."""
    if value is None:
        raise ScenarioError(f"{where}: needs {what}", hint)
    if not isinstance(value, str) or not rx.fullmatch(value):
        shown = _quoted(value) if isinstance(value, str) else _type(value)
        raise ScenarioError(f"{where}: {what} {shown} is not valid", hint)
    return value


def _stall(raw: Any, n: int, where: str) -> ExpectedStall:
    """stall[n]: the stall a scenario causes, as it states it."""
    at = f"{where}: stall[{n}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{at}: must be a table, not {_type(raw)}")
    keys = ("task", "reason", "function", "ended", "after_signal")
    for key in raw:
        if key not in keys:
            raise ScenarioError(f"{at}: unknown key {_quoted(key)} (expected one of "
                                f"{', '.join(keys)})")
    task = _pattern(raw.get("task"), stall_expect.TASK, "task", at,
                    "a task is named by its comm: at most 15 letters, digits, _, . and -")
    reasons = [str(r) for r in stall_expect.REASONS]
    reason = raw.get("reason")
    if reason not in reasons:
        raise ScenarioError(f"{at}: reason must be one of {', '.join(reasons)}")
    ends = [str(e) for e in stall_expect.Ended if e != stall_expect.Ended.OPEN]
    ended = raw.get("ended")
    if ended not in ends:
        raise ScenarioError(f"{at}: ended must be one of {', '.join(ends)}")
    function = ""
    if reason == Reason.SLEEPING_ON_FUNCTION:
        function = _pattern(raw.get("function"), _FUNCTION, "function", at,
                            "a task sleeping on a function names that function")
    elif "function" in raw:
        raise ScenarioError(f"{at}: only a task sleeping on a function names a function")
    after = raw.get("after_signal")
    if after is not None and not isinstance(after, bool):
        raise ScenarioError(f"{at}: after_signal must be true or false, not {_type(after)}")
    return ExpectedStall(task, Reason(reason), stall_expect.Ended(ended), function, after)


def _stalls(d: dict[str, Any], where: str) -> tuple[ExpectedStall, ...]:
    """The `[[stall]]` tables."""
    raw = d.get("stall", [])
    if not isinstance(raw, list) or len(raw) > MAX_STALLS:
        raise ScenarioError(f"{where}: `stall` must be an array of at most {MAX_STALLS} "
                            "tables ([[stall]])")
    return tuple(_stall(s, n, where) for n, s in enumerate(raw))


def _readers(steps: tuple[Step, ...], w: _Where) -> None:
    """A reader reads a file of a module loaded before it, and is reaped once it was spawned."""
    loaded: set[str] = set()
    spawned: set[str] = set()
    for i, s in enumerate(steps):
        if s.kind == StepKind.LOAD:
            loaded.add(kernel_name(s.module))
        elif s.kind == StepKind.SPAWN:
            if kernel_name(s.read.split("/")[0]) not in loaded:
                raise ScenarioError(f"{w.step(i, 'read')}: steps[{i}]: read {_quoted(s.read)} "
                                    "is not a file of a module an earlier step loads")
            spawned.add(s.reader)
        elif s.kind == StepKind.REAP and s.reader not in spawned:
            raise ScenarioError(f"{w.step(i)}: steps[{i}]: reap {_quoted(s.reader)}: no "
                                "earlier step spawns a reader of that name")


def parse(text: str, where: str) -> Scenario:
    """A Scenario from TOML text; where (the file) names it in errors."""
    layout = _layout(text, MAX_DEPTH)
    w = _Where(where, layout)
    if layout.deep_line:
        raise ScenarioError(f"{w.at(layout.deep_line)}: nested more than {MAX_DEPTH} deep "
                            "(a scenario needs two: steps = [{ ... }])")
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{w.path}: not valid TOML: {e}") from None
    except ValueError:  # an integer of more digits than Python converts (4,300)
        raise ScenarioError(f"{w.path}: an integer with too many digits") from None
    except RecursionError:  # the bracket count above missed a way to nest
        raise ScenarioError(f"{w.path}: nested too deeply") from None
    for key in d:
        if key not in TOP_KEYS:
            raise ScenarioError(f"{w.key(key)}: unknown key {_quoted(key)} "
                                f"(expected one of {', '.join(TOP_KEYS)})")
    sid = _text(d, "id", w.key("id"), lines=False)
    if len(sid) > MAX_ID or not ID.fullmatch(sid):
        raise ScenarioError(
            f"{w.key('id')}: id {_quoted(sid)} is not kebab-case",
            "an id is words of lowercase letters and digits joined by single dashes, "
            f"e.g. acme-target-first, at most {MAX_ID} characters")
    title = _text(d, "title", w.key("title"), lines=False, limit=MAX_TITLE)
    doc = _text(d, "doc", w.key("doc"), lines=True)
    expect = parse_expectation(_text(d, "expect", w.key("expect"), lines=True))
    if not expect:
        raise ScenarioError(f"{w.key('expect')}: `expect` has no lines (only blank lines "
                            "and # comments)")
    if len(expect) > MAX_EXPECT_LINES:
        raise ScenarioError(f"{w.key('expect')}: `expect` has more than {MAX_EXPECT_LINES} "
                            "lines")
    raw_steps = d.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        got = "is missing" if raw_steps is None else f"is {_type(raw_steps)}"
        raise ScenarioError(f"{w.key('steps')}: `steps` must be a non-empty array ({got})")
    if len(raw_steps) > MAX_STEPS:
        raise ScenarioError(f"{w.key('steps')}: more than {MAX_STEPS} steps")
    steps = tuple(_step(s, i, w) for i, s in enumerate(raw_steps))
    _readers(steps, w)
    stalls = _stalls(d, w.key("stall"))
    try:
        leaks = leak_expect.tables(d.get("shadow_leak", []), w.key("shadow_leak"))
    except ValueError as e:
        raise ScenarioError(str(e)) from None
    for n, leak in enumerate(leaks):  # a module's name, as a step's
        _name(leak.allocated_by, f"shadow_leak[{n}]: allocated_by", w.key("shadow_leak"))
    lps = d.get("livepatches", [])
    if not isinstance(lps, list):
        raise ScenarioError(f"{w.key('livepatches')}: `livepatches` must be an array of "
                            f"module names, not {_type(lps)}")
    if len(lps) > MAX_LIVEPATCHES:
        raise ScenarioError(f"{w.key('livepatches')}: more than {MAX_LIVEPATCHES} livepatches")
    for n, lp in enumerate(lps):
        _name(lp, f"livepatches[{n}]", w.key("livepatches"))
    replaces_all = d.get("replaces_all", False)
    if not isinstance(replaces_all, bool):
        raise ScenarioError(f"{w.key('replaces_all')}: replaces_all must be true or false, "
                            f"not {_type(replaces_all)}")
    return Scenario(
        id=sid, title=title.strip(), doc=doc.strip(), steps=steps,
        expect=(*expect, *(st.line() for st in stalls), *(k.line() for k in leaks)),
        livepatches=tuple(lps), path=where, replaces_all=replaces_all, stalls=stalls,
        leaks=leaks,
    )


def load_dir(directory: str | Path = BUILTIN_DIR) -> list[Scenario]:
    """All scenarios of a directory, in file name order (which is their run order)."""
    p = Path(directory)
    if not p.is_dir():
        raise ScenarioError(f"{_path(p)} is not a directory of scenario files")
    found = scenario_files(p)
    if not found:
        raise ScenarioError(f"{_path(p)} has no *.toml scenario files")
    out: list[Scenario] = []
    first: dict[str, Path] = {}
    for f in found:
        text = _read(f)
        sc = parse(text, str(f))
        if sc.id in first:
            lay = _layout(text, MAX_DEPTH)
            raise ScenarioError(
                f"{_Where(str(f), lay).at(lay.keys.get('id'))}: id {_quoted(sc.id)} is also the "
                f"id of {_path(first[sc.id])}", "each scenario has an id of its own")
        first[sc.id] = f
        out.append(sc)
    return out


def scenario_files(directory: Path) -> list[Path]:
    """The files load_dir() reads, in their run order: *.toml, but not editors' files."""
    # names starting with a dot are editors' files (an Emacs lock is a dangling link)
    return sorted(f for f in directory.glob("*.toml") if not f.name.startswith("."))


def _read(f: Path) -> str:
    """The text of one scenario file; a named error for anything else found as *.toml."""
    why = files.special_file(f)
    if why:
        raise UsageError(f"{_path(f)} {why}, not a scenario file",
                         "scenario directories hold one TOML file per scenario: move it away")
    size = f.stat().st_size
    if size > MAX_FILE_BYTES:  # before reading it: nothing this big is a scenario
        raise ScenarioError(f"{_path(f)}: {size} bytes, more than a scenario file may "
                            f"hold ({MAX_FILE_BYTES >> 20} MiB)")
    return files.read_text(f, ScenarioError)


def select(scenarios: list[Scenario], ids: list[str]) -> list[Scenario]:
    """The scenarios named by ids (all when empty); an unknown id lists the valid ones."""
    if not ids:
        return scenarios
    by_id = {s.id: s for s in scenarios}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise UsageError(
            f"unknown scenario id(s): {', '.join(unknown)}",
            "valid ids: " + ", ".join(by_id) + " (see `klptrace list`)",
        )
    return [by_id[i] for i in ids]
