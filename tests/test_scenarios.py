"""Scenario files: all of klptrace's own parse, and broken ones are explained."""

from pathlib import Path
from typing import Any

import pytest

from klptrace import runner, scenario
from klptrace.errors import UsageError

IDS = [
    "target-module-before-livepatch", "module-coming-notifier", "module-going-notifier",
    "module-coming-and-going-notifiers", "target-module-not-present",
    "pre-patch-callback-enodev", "module-coming-pre-patch-callback-enodev",
    "multiple-target-modules", "busy-target-module", "multiple-livepatches", "atomic-replace",
    # the stalls of issue 22, each ended the way the kernel promises
    "stall-reader-signal-round", "stall-reader-uninterruptible", "stall-sleeping-kthread",
    # states and shadow variables (issue 21)
    "state-setup-teardown", "state-taken-over-by-replace", "compatible-cumulative-versions",
    "incompatible-version-refused", "shadow-kept-across-replace", "shadow-leak-reported",
]


def test_builtin_scenarios_are_the_twenty() -> None:
    scs = scenario.load_dir()
    assert [s.id for s in scs] == IDS
    for s in scs:
        assert len(s.doc) > 100, f"{s.id}: the doc must explain the order"
        assert s.expect[0].startswith("% insmod"), s.id
        assert s.livepatches


def test_unknown_id_lists_valid_ones() -> None:
    with pytest.raises(UsageError) as e:
        scenario.select(scenario.load_dir(), ["nope"])
    assert "atomic-replace" in (e.value.hint or "")


@pytest.mark.parametrize("text, msg", [
    ("id = 'x'", "needs a non-empty string `title`"),
    ("id='x'\ntitle='t'\ndoc='d'\nexpect='% a'\nsteps=[{ fly = 'x' }]", "exactly one of"),
    ("id='x'\ntitle='t'\ndoc='d'\nexpect='% a'\nsteps=[{ load = 'm', when = 1 }]", "unknown key"),
    ("id='x'\ntitle='t'\ndoc='d'\nexpect='% a'\nsteps=[{ wait_transition = 'p' }]",
     "needs transition"),
    ("id = [", "not valid TOML"),
])
def test_bad_scenarios(text: str, msg: str) -> None:
    with pytest.raises(scenario.ScenarioError, match=msg):
        scenario.parse(text, "f.toml")


# --- the schema: scenario files are untrusted input ------------------------------------------

HEAD = 'id = "x"\ntitle = "t"\ndoc = "d"\nexpect = "% insmod a.ko"\n'  # steps go on line 5
NEST = 3000


def _steps(*steps: str) -> str:
    """A scenario whose steps are one a line, from line 6 on."""
    return HEAD + "steps = [\n" + "".join(f"  {s},\n" for s in steps) + "]\n"


@pytest.mark.parametrize(("text", "says"), [
    # names become paths: only the kernel's module names, one path component each
    (_steps('{ load = "../../../../etc/passwd" }'),
     'f.toml:6: steps[0]: load "../../../../etc/passwd" is not a module name'),
    (_steps('{ load = "a" }', '{ load = "/etc/passwd" }'),
     'f.toml:7: steps[1]: load "/etc/passwd" is not a module name'),
    (_steps('{ load = "-f" }'), 'f.toml:6: steps[0]: load "-f" is not a module name'),
    (_steps('{ load = "a.ko" }'), 'f.toml:6: steps[0]: load "a.ko" is not a module name'),
    (_steps('{ load = "" }'), 'f.toml:6: steps[0]: load "" is not a module name'),
    (_steps('{ load = "a\\u0000b" }'), 'f.toml:6: steps[0]: load "a\\u0000b" is not a module name'),
    (_steps(f'{{ load = "{"m" * 56}" }}'),
     f'f.toml:6: steps[0]: load "{"m" * 56}" is 56 characters, longer than a module name can be'),
    (_steps('{ unload = 3 }'),
     "f.toml:6: steps[0]: unload must be a string (a module name), not an integer"),
    (_steps('{ set = "printk", param = "../../../../etc/passwd", value = "x" }'),
     'f.toml:6: steps[0]: param "../../../../etc/passwd" is not a parameter name'),
    (_steps('{ set = "../../kernel", param = "x", value = "1" }'),
     'f.toml:6: steps[0]: set "../../kernel" is not a module name'),
    (_steps('{ set = "m", param = 5, value = "1" }'),
     "f.toml:6: steps[0]: param an integer is not a parameter name"),
    (_steps('{ disable = "../mm/transparent_hugepage" }'),
     'f.toml:6: steps[0]: disable "../mm/transparent_hugepage" is not a module name'),
    (_steps('{ wait_transition = "..", transition = 0 }'),
     'f.toml:6: steps[0]: wait_transition ".." is not a module name'),
    (_steps('{ load = "a", params = "../x=1" }'),
     'f.toml:6: steps[0]: params: "../x" is not a parameter name'),
    (_steps('{ load = "a", params = "x=1\\ny=2" }'),
     'f.toml:6: steps[0]: params holds the control character "\\n"'),
    (_steps('{ load = "a", params = "x=\\"1" }'),
     "f.toml:6: steps[0]: params has an unclosed double quote"),
    (_steps('{ set = "m", param = "p", value = "0\\u2028ok 1 - injected" }'),
     'f.toml:6: steps[0]: value holds the control character "\\u2028"'),
    (_steps('{ set = "m", param = "p", value = "0\\nok 1 - injected" }'),
     'f.toml:6: steps[0]: value holds the control character "\\n"'),
    (_steps(f'{{ set = "m", param = "p", value = "{"9" * 1025}" }}'),
     "f.toml:6: steps[0]: value is longer than 1024 characters"),
    (_steps('{ set = "m", param = "p", value = true }'),
     "f.toml:6: steps[0]: value must be a string, not a boolean"),
    (_steps('{ set = "m", param = "p", value = 1.5 }'),
     "f.toml:6: steps[0]: value must be a string, not a float"),
    (_steps(f'{{ set = "m", param = "p", value = {"9" * 30} }}'),
     "f.toml:6: steps[0]: value is an integer out of range"),
    (_steps('{ load = "a", module = "../x" }'),
     'f.toml:6: steps[0]: unknown key "module" for a load step (expected one of load, params, '
     "wait)"),
    # strict types: a bool is not an int, a string is not a bool
    (_steps('{ wait_transition = "p", transition = true }'),
     "f.toml:6: steps[0]: transition must be the integer 0 or 1, not a boolean"),
    (_steps('{ wait_transition = "p", transition = 2 }'),
     "f.toml:6: steps[0]: transition must be the integer 0 or 1, not 2"),
    (_steps(f'{{ wait_transition = "p", transition = {"9" * 7} }}'),
     "f.toml:6: steps[0]: transition must be the integer 0 or 1, not an integer"),
    (_steps(f'{{ wait_transition = "p", transition = {"9" * 5000} }}'),
     "f.toml: an integer with too many digits"),
    (_steps('{ wait_transition = "p", transition = "1" }'),
     "f.toml:6: steps[0]: transition must be the integer 0 or 1, not a string"),
    (_steps('{ load = "a", wait = "false" }'),
     "f.toml:6: steps[0]: wait must be true or false, not a string"),
    (_steps('{ load = "a", wait = 0 }'),
     "f.toml:6: steps[0]: wait must be true or false, not an integer"),
    (HEAD + 'replaces_all = "false"\nsteps = [{ load = "a" }]',
     "f.toml:5: replaces_all must be true or false, not a string"),
    (HEAD + 'livepatches = "a"\nsteps = [{ load = "a" }]',
     "f.toml:5: `livepatches` must be an array of module names, not a string"),
    (HEAD + 'livepatches = ["a", "../b"]\nsteps = [{ load = "a" }]',
     'f.toml:5: livepatches[1] "../b" is not a module name'),
    (HEAD + 'steps = "load a"', "f.toml:5: `steps` must be a non-empty array (is a string)"),
    (HEAD + "steps = []", "f.toml:5: `steps` must be a non-empty array (is an array)"),
    (HEAD + 'steps = ["a"]',
     'f.toml:5: steps[0]: a step must be a table, e.g. { load = "klptrace_target" }, '
     "not a string"),
    # unknown keys: named, with the step and what was expected
    (_steps('{ load = "a" }', '{ lod = "a" }'),
     'f.toml:7: steps[1]: unknown key "lod" (expected one of load, unload, disable, set, '
     "wait_transition, spawn, reap, wait_param, wait_blocked)"),
    (_steps('{ load = "a", unload = "a" }'),
     "f.toml:6: steps[0]: a step needs exactly one of the actions load, unload, disable, set, "
     "wait_transition, spawn, reap, wait_param, wait_blocked, not load and unload"),
    (_steps("{}"), "f.toml:6: steps[0]: a step needs exactly one of the actions load, unload, "
     "disable, set, wait_transition, spawn, reap, wait_param, wait_blocked, not none"),
    (HEAD + 'when = 1\nsteps = [{ load = "a" }]',
     'f.toml:5: unknown key "when" (expected one of id, title, doc, livepatches, replaces_all, '
     "steps, expect, stall, shadow_leak)"),
    (HEAD + '[[steps]]\nload = "a"\n\n[[steps]]\nunload = "a"\nwiat = true\n',
     'f.toml:10: steps[1]: unknown key "wiat" for a unload step (expected one of unload)'),
    # ids become arguments and test names: kebab-case, one line
    (_steps('{ load = "a" }').replace('"x"', '"--allow-replace"'),
     'f.toml:1: id "--allow-replace" is not kebab-case'),
    (_steps('{ load = "a" }').replace('"x"', '"a\\nok 1 - injected"'),
     'f.toml:1: `id` holds the control character "\\n" (it is one line)'),
    (_steps('{ load = "a" }').replace('"x"', '"Acme"'), 'f.toml:1: id "Acme" is not kebab-case'),
    (_steps('{ load = "a" }').replace('"x"', '"a--b"'), 'f.toml:1: id "a--b" is not kebab-case'),
    (_steps('{ load = "a" }').replace('"x"', f'"{"a" * 65}"'),
     f'f.toml:1: id "{"a" * 65}" is not kebab-case'),
    (_steps('{ load = "a" }').replace('title = "t"', 'title = "t\\u0000"'),
     'f.toml:2: `title` holds the control character "\\u0000" (it is one line)'),
    # bounded size and depth, without a RecursionError
    (HEAD + "steps = " + "[" * NEST + "]" * NEST,
     "f.toml:5: nested more than 32 deep (a scenario needs two: steps = [{ ... }])"),
    (HEAD + 'steps = [{ load = "a", x = ' + "{ x = " * NEST + "1" + " }" * NEST + " }]",
     "f.toml:5: nested more than 32 deep (a scenario needs two: steps = [{ ... }])"),
    (HEAD + 'steps = [{ load = "a", ' + "x." * NEST + "y = 1 }]",
     'f.toml:5: steps[0]: unknown key "x" for a load step (expected one of load, params, wait)'),
    (HEAD.replace('"% insmod a.ko"', '"""' + "% a\n" * 4097 + '"""') + 'steps = [{ load = "a" }]',
     "f.toml:4: `expect` has more than 4096 lines"),
    (HEAD + "steps = [" + '{ load = "a" },' * 257 + "]", "f.toml:5: more than 256 steps"),
])  # fmt: skip
def test_the_schema_refuses(text: str, says: str) -> None:
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.parse(text, "f.toml")
    assert e.value.message == says
    assert "\n" not in e.value.message and "\n" not in (e.value.hint or "")


def test_brackets_in_strings_and_comments_are_not_nesting() -> None:
    deep, some = "[" * NEST + "{" * NEST, "[" * 40 + "{" * 40
    text = (HEAD.replace('"d"', f"'''{deep}'''") + f"# {deep}\n"
            + f'steps = [{{ load = "a", params = "p=\\"{some}\\"" }}]  # {deep}\n')
    sc = scenario.parse(text, "f.toml")
    assert (sc.doc, sc.steps[0].params) == (deep, f'p="{some}"')


def test_a_recursion_the_bracket_count_missed_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenario, "MAX_DEPTH", 10 * NEST)
    with pytest.raises(scenario.ScenarioError, match=r"^f.toml: nested too deeply"):
        scenario.parse(HEAD + "steps = " + "[" * NEST + "]" * NEST, "f.toml")


def test_what_the_schema_accepts() -> None:
    sc = scenario.parse(_steps(
        f'{{ load = "{"m" * 55}" }}', '{ load = "8021q" }', '{ load = "acme-lp_2", wait = false }',
        '{ load = "a", params = "x=1 msg=\\"two words\\" flag" }',
        '{ set = "a", param = "pre_patch_ret", value = -19 }',
        '{ wait_transition = "acme-lp_2", transition = 1 }', '{ disable = "acme-lp_2" }',
    ).replace('"x"', '"acme-2-first"').replace("\n", "\r\n"), "f.toml")
    assert sc.id == "acme-2-first"
    assert [s.module or s.patch for s in sc.steps] == [
        "m" * 55, "8021q", "acme-lp_2", "a", "a", "acme-lp_2", "acme-lp_2"]
    assert sc.steps[3].params == 'x=1 msg="two words" flag'
    assert sc.steps[4].value == "-19"
    assert (sc.steps[2].wait, sc.steps[5].transition) == (False, 1)
    K = scenario.StepKind
    assert [s.kind for s in sc.steps] == [K.LOAD] * 4 + [K.SET, K.WAIT_TRANSITION, K.DISABLE]
    assert all(type(s.kind) is K for s in sc.steps)
    # the enum's values are the files' keys: messages and JSON say them as before
    assert [str(k) for k in K] == ["load", "unload", "disable", "set", "wait_transition",
                                   "spawn", "reap", "wait_param", "wait_blocked"]
    assert f"{K.WAIT_TRANSITION}" == "wait_transition" and K("set") is K.SET


def _pack(tmp_path: Path, **texts: str) -> Path:
    d = tmp_path / "pack"
    d.mkdir()
    for name, text in texts.items():
        (d / f"{name}.toml").write_text(text)
    return d


def test_one_id_in_two_files_names_both(tmp_path: Path) -> None:
    good = (scenario.BUILTIN_DIR / "05-target-module-not-present.toml").read_text()
    d = _pack(tmp_path, a=good, b=good.replace("title =", "# a copy\ntitle ="), c=good)
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load_dir(d)
    assert e.value.message == (f'{d}/b.toml:1: id "target-module-not-present" is also the id '
                               f"of {d}/a.toml")


def test_an_oversized_file_is_refused_before_it_is_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _pack(tmp_path, a=_steps('{ load = "a" }') + "#" * scenario.MAX_FILE_BYTES)
    monkeypatch.setattr(scenario.tomllib, "loads", lambda *_a: pytest.fail("parsed"))
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load_dir(d)
    size = (d / "a.toml").stat().st_size
    assert e.value.message == (f"{d}/a.toml: {size} bytes, more than a scenario file may hold "
                               "(1 MiB)")


class _Untouchable:
    """A kernel, or recorder, that fails the test when anything of it is used."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"the runner used {name} for a name the schema refuses")


@pytest.mark.parametrize("step", [
    scenario.Step(scenario.StepKind.LOAD, module="../../../../etc/passwd"),
    scenario.Step(scenario.StepKind.LOAD, module="/etc/passwd"),
    scenario.Step(scenario.StepKind.DISABLE, patch="../mm/transparent_hugepage"),
    scenario.Step(scenario.StepKind.SET, module="printk", param="../../../../etc/passwd",
                  value="x"),
    scenario.Step(scenario.StepKind.SET, module="../../kernel", param="x", value="1"),
])
def test_the_runner_builds_no_path_from_a_name_that_is_not_one(step: scenario.Step) -> None:
    # scenario.py refuses these; the runner checks again before any path is opened as root
    run = runner.Runner(_Untouchable(), "/mods", _Untouchable(), None, 1.0)
    with pytest.raises(AssertionError, match=r"not a (module|parameter) name"):
        run.step(step)
    assert run.loaded == []
