"""Scenarios are data: one TOML file each, with a doc, steps and the expected
transcript. This module loads and validates them; runner.py executes them.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from klptrace import files
from klptrace.errors import KlptraceError, UsageError
from klptrace.transcript import parse_expectation

BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"

STEP_KINDS = {
    # kind: (required keys, optional keys)
    "load": ({"module"}, {"params", "wait"}),
    "unload": ({"module"}, set()),
    "disable": ({"patch"}, {"wait"}),
    "set": ({"module", "param", "value"}, set()),
    "wait_transition": ({"patch", "transition"}, set()),
}


class ScenarioError(KlptraceError):
    """A scenario file that is not valid."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One action on the kernel. `kind` is a key of STEP_KINDS."""

    kind: str
    module: str = ""
    patch: str = ""
    params: str = ""
    param: str = ""
    value: str = ""
    wait: bool = True
    transition: int = 0


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

    @property
    def modules(self) -> list[str]:
        """Every module the scenario loads, in order of first load."""
        seen: list[str] = []
        for s in self.steps:
            if s.kind == "load" and s.module not in seen:
                seen.append(s.module)
        return seen


def _step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError(
            f"{where}: a step must be a table, e.g. {{ load = \"klptrace_target\" }}")
    kinds = [k for k in raw if k in STEP_KINDS]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where}: a step needs exactly one of the actions {', '.join(STEP_KINDS)}")
    kind = kinds[0]
    required, optional = STEP_KINDS[kind]
    args = dict(raw)
    main = args.pop(kind)
    fields: dict[str, Any] = {}
    if kind in ("load", "unload", "set"):
        fields["module"] = main
    else:
        fields["patch"] = main
    fields.update(args)
    allowed = required | optional
    unknown = set(fields) - allowed
    if unknown:
        raise ScenarioError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} step")
    missing = required - set(fields)
    if missing:
        raise ScenarioError(f"{where}: a {kind} step needs {', '.join(sorted(missing))}")
    for k in ("module", "patch", "params", "param"):
        if k in fields and not isinstance(fields[k], str):
            raise ScenarioError(f"{where}: {k} must be a string")
    if "value" in fields:
        fields["value"] = str(fields["value"])
    if "wait" in fields and not isinstance(fields["wait"], bool):
        raise ScenarioError(f"{where}: wait must be true or false")
    if "transition" in fields and fields["transition"] not in (0, 1):
        raise ScenarioError(f"{where}: transition must be 0 or 1")
    return Step(kind=kind, **fields)


def parse(text: str, where: str) -> Scenario:
    """A Scenario from TOML text; where names it in errors."""
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{where}: not valid TOML: {e}") from None
    for key in ("id", "title", "doc", "expect"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            raise ScenarioError(f"{where}: needs a non-empty string `{key}`")
    raw_steps = d.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{where}: needs a non-empty list `steps`")
    steps = tuple(_step(s, f"{where}: steps[{i}]") for i, s in enumerate(raw_steps))
    lps = d.get("livepatches", [])
    if not isinstance(lps, list) or not all(isinstance(x, str) for x in lps):
        raise ScenarioError(f"{where}: `livepatches` must be a list of module names")
    known = {"id", "title", "doc", "expect", "steps", "livepatches", "replaces_all"}
    unknown = set(d) - known
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    return Scenario(
        id=d["id"], title=d["title"].strip(), doc=d["doc"].strip(), steps=steps,
        expect=tuple(parse_expectation(d["expect"])), livepatches=tuple(lps),
        path=where, replaces_all=bool(d.get("replaces_all", False)),
    )


def load_dir(directory: str | Path = BUILTIN_DIR) -> list[Scenario]:
    """All scenarios of a directory, in file name order (which is their run order)."""
    p = Path(directory)
    if not p.is_dir():
        raise ScenarioError(f"{p} is not a directory of scenario files")
    # names starting with a dot are editors' files (an Emacs lock is a dangling link)
    files = sorted(f for f in p.glob("*.toml") if not f.name.startswith("."))
    if not files:
        raise ScenarioError(f"{p} has no *.toml scenario files")
    out = [parse(_read(f), str(f)) for f in files]
    ids = [s.id for s in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ScenarioError(f"{p}: duplicate scenario id(s) {', '.join(sorted(dup))}")
    return out


def _read(f: Path) -> str:
    """The text of one scenario file; a named error for anything else found as *.toml."""
    why = files.special_file(f)
    if why:
        raise UsageError(f"{f} {why}, not a scenario file",
                         "scenario directories hold one TOML file per scenario: move it away")
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
