"""The checker on saved real recordings (tests/data/run-6.1.json and, of the stall
scenarios, run-stall-6.1.json, of the state and shadow scenarios, run-shadow-6.1.json,
recorded in the lab guest on Debian's 6.1): it passes them
as they are, and fails them when an event is dropped, two are swapped, or a value changes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from util import DATA, saved_run

from klptrace import checker, scenario, stall_expect
from klptrace.events import Callback, Event, EventKind
from klptrace.results import Probe, Recording, Status, Verdict

SCENARIOS = {s.id: s for s in scenario.load_dir()}
_STALL_RUN = json.loads((DATA / "run-stall-6.1.json").read_text())
_SHADOW_RUN = json.loads((DATA / "run-shadow-6.1.json").read_text())


def _recording(sid: str) -> Recording:
    # the stall scenarios of issue 22, and the state and shadow ones of issue 21, were
    # recorded in runs of their own
    run = next(r for r in (saved_run(), _STALL_RUN, _SHADOW_RUN)
               if any(s["id"] == sid for s in r["scenarios"]))
    sd = next(s for s in run["scenarios"] if s["id"] == sid)
    return Recording.from_json({"events": sd["events"], "lost_events": sd["lost_events"],
                                "probes": run["probes"]})


def _check(sid: str, rec: Recording) -> Verdict:
    return checker.judge(SCENARIOS[sid].expect, rec)


@pytest.mark.parametrize("sid", list(SCENARIOS))
def test_saved_recordings_pass(sid: str) -> None:
    v = _check(sid, _recording(sid))
    assert v.status == Status.PASS, v.explanation + "\n" + "\n".join(v.diff)


def _index(rec: Recording, pred: Any) -> int:
    return next(i for i, e in enumerate(rec.events) if pred(e))


def test_dropped_callback_fails_and_is_named() -> None:
    rec = _recording("target-module-before-livepatch")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.callback == Callback.POST_PATCH
               and e.object == "klptrace_target")
    del rec.events[i]
    v = _check("target-module-before-livepatch", rec)
    assert v.status == Status.FAIL
    assert "post_patch callback for klp_object klptrace_target" in v.explanation
    assert "not recorded" in v.explanation
    assert any(line.startswith("-klptrace_lp: post_patch_callback: klptrace_target")
               for line in v.diff)


def test_swapped_callbacks_fail_as_order() -> None:
    rec = _recording("module-going-notifier")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.callback == Callback.PRE_UNPATCH
               and e.object == "klptrace_target")
    j = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.callback == Callback.POST_UNPATCH
               and e.object == "klptrace_target")
    rec.events[i], rec.events[j] = rec.events[j], rec.events[i]
    v = _check("module-going-notifier", rec)
    assert v.status == Status.FAIL
    assert "order differs" in v.explanation


def test_changed_return_value_fails() -> None:
    rec = _recording("pre-patch-callback-enodev")
    i = _index(rec, lambda e: e.kind == EventKind.STEP_RESULT)
    rec.events[i] = dataclasses.replace(
        rec.events[i], detail=rec.events[i].detail.replace("No such device", "Invalid argument"))
    assert _check("pre-patch-callback-enodev", rec).status == Status.FAIL
    # and a pre_patch that returned 0 instead of -19 is a different story entirely
    rec = _recording("pre-patch-callback-enodev")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.ret == -19)
    rec.events[i] = dataclasses.replace(rec.events[i], ret=0)
    v = _check("pre-patch-callback-enodev", rec)
    assert v.status == Status.FAIL
    assert "pre_patch callback failing for vmlinux" in v.explanation


def test_changed_module_state_fails() -> None:
    rec = _recording("module-coming-notifier")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.object == "klptrace_target")
    rec.events[i] = dataclasses.replace(rec.events[i], state=0)  # LIVE instead of COMING
    assert _check("module-coming-notifier", rec).status == Status.FAIL


def test_lost_events_are_an_error_not_a_pass() -> None:
    rec = _recording("target-module-not-present")
    rec.lost = 3
    v = _check("target-module-not-present", rec)
    assert v.status == Status.ERROR and "3 events were lost" in v.explanation


def test_probe_that_did_not_attach_is_an_error() -> None:
    rec = _recording("target-module-not-present")
    rec.probes = [*rec.probes, Probe("kprobe:klp_force_transition", "", False,
                                     "not in this kernel's symbols")]
    v = _check("target-module-not-present", rec)
    assert v.status == Status.ERROR and "klp_force_transition" in v.explanation


def test_post_patch_during_busy_transition_would_fail() -> None:
    """The kernel must not run post_patch while the patch is in transition."""
    rec = _recording("busy-target-module")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.object == "klptrace_target")
    extra = dataclasses.replace(rec.events[i], callback=Callback.POST_PATCH, ret=None)
    rec.events.insert(i + 1, extra)
    v = _check("busy-target-module", rec)
    assert v.status == Status.FAIL and "must not do here" in v.explanation


def test_the_first_divergence_is_a_field_of_the_verdict() -> None:
    """judge names the line it explains (its explanation leads with it); a pass, an
    untrusted recording or a failed step has none."""
    rec = _recording("busy-target-module")
    i = _index(rec, lambda e: e.kind == EventKind.CALLBACK and e.object == "klptrace_target")
    rec.events.insert(i + 1, dataclasses.replace(rec.events[i], callback=Callback.POST_PATCH,
                                                 ret=None))
    expected = list(SCENARIOS["busy-target-module"].expect)
    v = checker.judge(expected, rec)
    assert v.divergence is not None and v.explanation.startswith(f"line {v.divergence}: ")
    assert v.divergence == checker.first_divergence(expected, v.recorded)
    assert expected[:v.divergence - 1] == v.recorded[:v.divergence - 1]
    assert expected[v.divergence - 1] != v.recorded[v.divergence - 1]
    dmesg = checker.witnessed(v.recorded)[1:]  # the kernel log disagrees too: still leads
    assert checker.judge(expected, rec, dmesg=dmesg).divergence == v.divergence
    assert checker.judge(expected, rec, step_error="insmod failed").divergence is None
    rec.lost = 1
    assert checker.judge(expected, rec).divergence is None
    assert _check("busy-target-module", _recording("busy-target-module")).divergence is None


def test_event_from_json_rejects_garbage() -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        Event.from_json({"kind": "callback", "ts_ns": "soon"})


def test_dmesg_witness_filter_and_disagreement() -> None:
    from klptrace import transcript

    dmesg = ["% insmod klptrace_lp.ko", "klptrace_lp: tainting kernel with TAINT_LIVEPATCH",
             "livepatch: enabling patch 'klptrace_lp'",
             "livepatch: klp_try_switch_task: kworker/0:1:33 is sleeping on function f",
             "klptrace_lp: pre_patch_callback: vmlinux", "klptrace_busy: klptrace_busy_init",
             "klptrace_busy: klptrace_busy_work_func enter"]
    w = transcript.witnessed(dmesg)
    assert w == ["livepatch: enabling patch 'klptrace_lp'",
                 "klptrace_lp: pre_patch_callback: vmlinux", "klptrace_busy: klptrace_busy_init"]
    assert checker.witness([*w, "insmod: ERROR: could not insert module x"], w) == ""
    problem = checker.witness(w[:1] + w[2:], w)
    assert problem.startswith("dmesg disagrees") and "pre_patch callback" in problem


def test_kmsg_record_parsing() -> None:
    from klptrace.kernel import kmsg

    assert kmsg.parse_record(b"6,1234,5678,-;livepatch: enabling patch 'p'\n") == \
        (0, 0.005678, "livepatch: enabling patch 'p'")
    assert kmsg.parse_record(b"4,1,2,c;a: b\n SUBSYSTEM=x\n") == (0, 2e-06, "a: b")
    # a user's write (facility 1, user) is not the kernel's
    assert kmsg.parse_record(b"12,7,9,-;% insmod x.ko\n")[0] == 1


def test_probe_the_kernel_did_not_arm_is_an_error() -> None:
    rec = _recording("target-module-not-present")
    rec.probes = [*rec.probes, Probe(
        "kprobe:klptrace_lp:klptrace_lp_pre_patch", "", False,
        "the kernel did not arm it when klptrace_lp came: Failed to re-register "
        "probe p0_3_klptrace_lp_pre_patch on klptrace_lp: -22 (EINVAL)", armed=False)]
    v = _check("target-module-not-present", rec)
    assert v.status == Status.ERROR
    assert "klptrace_lp_pre_patch was not armed" in v.explanation and "-22" in v.explanation


@pytest.mark.parametrize("sid", ["stall-reader-signal-round", "stall-reader-uninterruptible",
                                 "stall-sleeping-kthread"])
def test_a_stall_that_ended_otherwise_fails(sid: str) -> None:
    """The saved stall recordings, judged against a [[stall]] that says otherwise: the
    stall line is where they diverge."""
    sc = SCENARIOS[sid]
    other = next(e for e in ("returned", "signal") if e != sc.stalls[0].ended)
    wrong = dataclasses.replace(sc.stalls[0], ended=stall_expect.Ended(other)).line()
    v = checker.judge([*sc.expect[:-1], wrong], _recording(sid))
    assert v.status == Status.FAIL and v.divergence == len(sc.expect)
    assert v.recorded[-1] == sc.expect[-1]
