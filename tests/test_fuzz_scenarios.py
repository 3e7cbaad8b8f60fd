"""Scenario files and saved runs as an adversary would write them, fuzzed (hypothesis,
derandomized so that CI sees the same examples every time, about a minute in all).

Scenario files run as root: the shipped ones are mutated (a value replaced by text aimed
out of the module directory or sysfs, a control character, a wrong type, a key dropped
or added) and their TOML text cut and spliced. Each is refused with one named error, or
parses into names that cannot leave the module directory or sysfs. Through the command
line (`list`, `run --vm` refused before anything is fetched, `check`), every exit status
is a documented one, nothing prints a traceback, and nothing is written but `-o`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz_saved import mutated
from test_saved_runs import output_parses
from util import REPO

from klptrace import runner, scenario
from klptrace.errors import KlptraceError

SHIPPED = {p.name: p.read_text() for p in sorted(scenario.BUILTIN_DIR.glob("*.toml"))}
_AIMED = ["../../../../etc/passwd", "/etc/passwd", "..", ".", "-F", "--allow-replace",
          "klptrace_lp/../x", "a/b", "a\x00b", "a\nb", "\u2028", "x" * 56, "", " ", "é",
          "klptrace_lp", "klptrace-target", "_", "0", "enabled"]
_TEXT = st.sampled_from(_AIMED) | st.text(max_size=8)
_SCALAR = st.booleans() | _TEXT | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=5)


def _toml_value(v: Any) -> str:
    """v as TOML (inline), for the subset the fuzz makes."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string takes JSON's escapes, \u included
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _toml(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in doc.items())


@st.composite
def mutated_scenario(draw: st.DrawFn) -> str:
    """The text of a shipped scenario with one to three values changed, or its text spliced."""
    text = SHIPPED[draw(st.sampled_from(sorted(SHIPPED)))]
    if draw(st.integers(0, 4)) == 0:  # the text itself cut and spliced
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        return text[:i] + draw(st.sampled_from(["", '"', "[", "]", "{", "\n", "= 1", "\x00",
                                                 '"../x"', "'''"])) + text[j:]
    doc = tomllib.loads(text)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["step", "step", "top", "drop", "add"]))
        steps = doc.get("steps")
        if how == "step" and isinstance(steps, list) and steps and isinstance(steps[0], dict):
            step = steps[draw(st.integers(0, len(steps) - 1))]
            keys = [*sorted(step), "module", "param", "value", "params", "transition"]
            step[draw(st.sampled_from(keys))] = draw(_VALUE)
        elif how == "drop" and doc:
            del doc[draw(st.sampled_from(sorted(doc)))]
        elif how == "add":
            doc[draw(_TEXT)] = draw(_VALUE)
        else:
            doc[draw(st.sampled_from(scenario.TOP_KEYS))] = draw(_VALUE)
    return _toml(doc)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_scenario())
def test_a_mutated_scenario_is_refused_or_names_only_what_it_may(text: str) -> None:
    try:
        sc = scenario.parse(text, "fuzz.toml")
    except KlptraceError as e:
        assert "\n" not in e.message and e.message.startswith("fuzz.toml")
        event("refused")
        return
    event("parsed")
    assert scenario.ID.fullmatch(sc.id)
    r = runner.Runner(None, "/mods", None, None, 1.0)  # type: ignore[arg-type]
    for s in sc.steps:
        for name in (s.module, s.patch):
            if name:
                assert scenario.is_module_name(name), name
        if s.kind == "load":
            assert os.path.dirname(r.ko(s.module)) == "/mods"
        if s.kind == "set":
            assert scenario.is_param_name(s.param) and "\n" not in s.value


def _klptrace(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """klptrace as a user runs it, with a cache and a temporary directory of its own."""
    env = {**os.environ, "KLPTRACE_CACHE": str(tmp / "cache"), "TMPDIR": str(tmp / "tmp"),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "klptrace", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _fresh(tmp: Path) -> Path:
    for d in ("cache", "tmp", "work"):
        (tmp / d).mkdir()
    return tmp / "work"


def _nothing_else_written(tmp: Path, allowed: set[str]) -> None:
    assert not list((tmp / "tmp").iterdir())
    assert not list((tmp / "cache").iterdir())  # nothing downloaded, nothing built
    assert {p.name for p in (tmp / "work").iterdir()} <= allowed


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(mutated_scenario())
def test_the_command_line_refuses_a_mutated_scenario_before_any_work(
        tmp_path_factory: Any, text: str) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    work = _fresh(tmp)
    (work / "s.toml").write_text(text)
    listed = _klptrace("list", "--scenarios", ".", cwd=work, tmp=tmp)
    assert "Traceback" not in listed.stderr
    if listed.returncode == 0:  # a valid scenario: what it names is checked in-process
        event("valid")
        return
    event("refused")
    assert listed.returncode in (1, 2) and listed.stderr.startswith("klptrace: error:")
    # `run --vm` refuses it the same way, before any download, build or boot
    run = _klptrace("run", "--vm", "--scenarios", ".", cwd=work, tmp=tmp)
    assert (run.returncode, run.stderr) == (listed.returncode, listed.stderr)
    _nothing_else_written(tmp, {"s.toml"})


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(mutated(), st.sampled_from(["text", "json", "ktap", "junit", "kcidb", "html",
                                   "trace-event"]))
def test_check_of_a_mutated_run_exits_as_documented_and_writes_only_its_output(
        tmp_path_factory: Any, text: str, fmt: str) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    work = _fresh(tmp)
    (work / "r.json").write_text(text)
    p = _klptrace("check", "r.json", "--format", fmt, "-o", "out", cwd=work, tmp=tmp)
    assert "Traceback" not in p.stderr
    assert p.returncode in (0, 1, 2, 4), p.stderr  # pass, fail, usage, nothing ran
    if p.returncode in (0, 1, 4) and (work / "out").exists():
        output_parses(fmt, (work / "out").read_text())
    elif p.returncode != 0:
        assert p.stderr.startswith("klptrace: error:") or "klptrace:" in p.stderr
    _nothing_else_written(tmp, {"r.json", "out"})
