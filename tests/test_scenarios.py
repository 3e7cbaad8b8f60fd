"""Scenario files: all of klptrace's own parse, and broken ones are explained."""

import pytest

from klptrace import scenario
from klptrace.errors import UsageError

IDS = [
    "target-module-before-livepatch", "module-coming-notifier", "module-going-notifier",
    "module-coming-and-going-notifiers", "target-module-not-present",
    "pre-patch-callback-enodev", "module-coming-pre-patch-callback-enodev",
    "multiple-target-modules", "busy-target-module", "multiple-livepatches", "atomic-replace",
]


def test_builtin_scenarios_are_the_eleven() -> None:
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
