"""--format trace-event: Chrome trace-event JSON (the format Perfetto's UI and chrome://tracing
load), checked against the format's documented fields, and what it shows of a run."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import shadowed
from util import DATA, saved_run

from klptrace import cli, report, results

METADATA = {"process_name": "name", "thread_name": "name", "process_sort_index": "sort_index",
            "thread_sort_index": "sort_index"}


def _events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    trace = json.loads(report.render("trace-event", results.load(doc, "doc")))
    assert set(trace) >= {"traceEvents"} and trace.get("displayTimeUnit") in ("ms", "ns")
    events: list[dict[str, Any]] = trace["traceEvents"]
    _check_structure(events)
    return events


def _check_structure(events: list[dict[str, Any]]) -> None:
    """The fields the format documents for each phase, and tracks that viewers can draw."""
    named: set[tuple[int, int]] = set()
    processes: set[int] = set()
    for e in events:
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str) and e["name"] and isinstance(e["args"], dict), e
        if e["ph"] == "M":
            assert set(e["args"]) == {METADATA[e["name"]]}, e
            if e["name"] == "thread_name":
                named.add((e["pid"], e["tid"]))
            if e["name"] == "process_name":
                processes.add(e["pid"])
            continue
        assert e["ph"] in ("X", "i"), e
        assert isinstance(e["cat"], str) and e["cat"], e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        else:
            assert e["s"] in ("t", "p", "g") and "dur" not in e, e
        assert (e["pid"], e["tid"]) in named and e["pid"] in processes, e
    # complete events on one track nest (viewers drop or misdraw ones that cross)
    spans: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            spans[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for track in spans.values():
        track.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for begin, end in track:
            while stack and stack[-1] <= begin:
                stack.pop()
            assert not stack or end <= stack[-1], f"{begin}-{end} crosses a span ending {stack}"
            stack.append(end)


def _threads(events: list[dict[str, Any]], pid: int = 1) -> dict[str, int]:
    return {e["args"]["name"]: e["tid"] for e in events
            if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == pid}


def _within(events: list[dict[str, Any]], span: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in events if e["ph"] != "M" and e["pid"] == span["pid"]
            and span["ts"] <= e["ts"] <= span["ts"] + span["dur"]]


def test_structure_and_tracks_of_a_saved_run(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    assert cli.main(["check", str(DATA / "run-6.1.json"), "--format", "trace-event",
                     "-o", str(out)]) == 0
    events = json.loads(out.read_text())["traceEvents"]
    _check_structure(events)
    threads = _threads(events)
    run = saved_run()
    evs = [e for s in run["scenarios"] for e in s["events"]]
    objects = {e["object"] for e in evs if e["kind"] == "callback"}
    assert {f"klp_object {o}" for o in objects} <= set(threads)
    assert {"livepatch klptrace_lp", "klptrace_lp transitions", "scenarios"} <= set(threads)
    # every task the kernel ran livepatch work in has its own track, named by comm and tid
    tasks = {name.rsplit(" ", 1)[1] for name in threads if name.rsplit(" ", 1)[-1].isdigit()}
    assert tasks == {str(e["tid"]) for e in evs}
    assert "kworker/1:2 54" in threads
    scenarios = [e for e in events if e["tid"] == threads["scenarios"] and e["ph"] == "X"]
    assert [e["name"] for e in scenarios] == [s["id"] for s in run["scenarios"]]
    # one time axis: the scenarios follow each other, in microseconds of the kernel's clock
    assert all(a["ts"] + a["dur"] <= b["ts"] for a, b in pairwise(scenarios))
    first = run["scenarios"][0]["events"]
    assert scenarios[0]["ts"] == 0
    assert scenarios[0]["dur"] == round((first[-1]["ts_ns"] - first[0]["ts_ns"]) / 1000, 3)


def test_callbacks_on_their_klp_object_track_with_their_result() -> None:
    events = _events(saved_run())
    threads = _threads(events)
    by_track = defaultdict(list)
    for e in events:
        if e["ph"] == "i" and e["cat"] == "callback":
            by_track[e["tid"]].append(e)
    run = saved_run()
    callbacks = [e for s in run["scenarios"] for e in s["events"] if e["kind"] == "callback"]
    assert sum(map(len, by_track.values())) == len(callbacks)
    for cb in callbacks:
        track = by_track[threads[f"klp_object {cb['object']}"]]
        assert any(e["name"] == cb["callback"] and e["args"]["patch"] == cb["patch"]
                   and e["args"].get("ret") == cb.get("ret") for e in track), cb
    pre = [e for t in by_track.values() for e in t if e["name"] == "pre_patch"]
    # pre-patch-callback-enodev's pre_patch refuses with -ENODEV
    assert {e["args"]["ret"] for e in pre} == {0, -19}


def test_busy_target_module_stall_is_one_transition_spanning_its_tries() -> None:
    events = _events(saved_run())
    threads = _threads(events)
    [busy] = [e for e in events if e["ph"] == "X" and e["name"] == "busy-target-module"]
    inside = _within(events, busy)
    transitions = [e for e in inside if e["ph"] == "X"
                   and e["tid"] == threads["klptrace_lp transitions"]]
    tries = [e for e in inside if e["name"] == "klp_try_complete_transition"]
    assert len(transitions) == 1 and len(tries) == 2
    [tr] = transitions
    assert all(tr["ts"] <= t["ts"] <= tr["ts"] + tr["dur"] for t in tries)
    assert tr["name"] == "patching, reversed"
    assert tr["args"]["tries"] == 2 and tr["args"]["final_target"] == "unpatched"
    assert tr["args"]["complete"] is True and tr["dur"] > 1_000_000  # the stall: over 1 s
    # the second try is the kernel's own retry from a workqueue, on that task's track
    assert {t["tid"] for t in tries} == {threads["klptrace/python3 254"],
                                         threads["kworker/1:2 54"]}
    marks = [e["name"] for e in inside if e["tid"] == tr["tid"] and e["ph"] == "i"]
    assert marks == ["start", "reverse", "reversed", "complete", "klp_unpatch_objects"]


def test_module_coming_going_and_steps() -> None:
    events = _events(saved_run())
    threads = _threads(events)
    target = threads["klp_object klptrace_target"]
    on_target = {e["name"] for e in events if e["tid"] == target and e["ph"] != "M"}
    assert {"klp_module_coming klptrace_target", "do_init_module klptrace_target",
            "klp_module_going", "free_module", "klp_patch_object"} <= on_target
    steps = [e for e in events if e.get("cat") == "step" and e["name"].startswith("% ")]
    assert "% insmod klptrace_busy.ko block_transition=Y" in {e["name"] for e in steps}
    assert {e["tid"] for e in steps} == {threads["klptrace/python3 254"]}
    enable = [e for e in events if e["name"] == "klp_enable_patch klptrace_lp"]
    assert enable and all(e["ph"] == "X" and e["args"]["ret"] in (0, -19) for e in enable)


def test_unfinished_transition_and_skipped_scenario() -> None:
    run = saved_run()
    sc = next(s for s in run["scenarios"] if s["id"] == "busy-target-module")
    done = next(i for i, e in enumerate(sc["events"]) if e["kind"] == "transition_complete")
    sc["events"] = sc["events"][:done]  # the recording ends in the middle of the stall
    run["scenarios"][0].update(status="skip", events=[])
    events = _events(run)
    assert "target-module-before-livepatch" not in {e["name"] for e in events}
    [busy] = [e for e in events if e["ph"] == "X" and e["name"] == "busy-target-module"]
    [tr] = [e for e in _within(events, busy) if e.get("cat") == "transition" and e["ph"] == "X"]
    assert tr["args"]["complete"] is False and tr["ts"] + tr["dur"] == busy["ts"] + busy["dur"]


def test_matrix_is_one_process_per_kernel() -> None:
    other = saved_run()
    other["kernel"] = "6.12.57+deb12-amd64"
    events = _events({"runs": [saved_run(), other]})
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {1: "kernel 6.1.0-56-amd64", 2: "kernel 6.12.57+deb12-amd64"}
    for pid in (1, 2):
        mine = [e for e in events if e["pid"] == pid and e["ph"] != "M"]
        assert min(e["ts"] for e in mine) == 0 and len(_threads(events, pid)) == 11
    assert len([e for e in events if e["ph"] != "M"]) == 2 * len(
        [e for e in _events(saved_run()) if e["ph"] != "M"])


# --- states and shadow variables (issue 21) ---------------------------------------------


def _klp(*scs: results.ScenarioResult) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The trace of scs as one run: each track's id by its name, and its events (checked)."""
    trace = json.loads(report.render("trace-event", shadowed.doc(*scs)))
    events: list[dict[str, Any]] = trace["traceEvents"]
    _check_structure(events)
    tids = {e["args"]["name"]: e["tid"] for e in events if e["name"] == "thread_name"}
    return tids, events


def _on(events: list[dict[str, Any]], tid: int, ph: str) -> list[dict[str, Any]]:
    return [e for e in events if e["tid"] == tid and e["ph"] == ph]


def test_a_state_track_shows_its_holders_and_a_variable_track_its_life() -> None:
    sh = shadowed
    tids, events = _klp(sh.result("kept", sh.kept()))
    held = _on(events, tids["state 42"], "X")
    assert [(e["name"], e["args"]["taken_over_by"]) for e in held] == [
        (f"{sh.LP} v1", sh.LP2), (f"{sh.LP2} v1", None)]
    assert held[0]["ts"] + held[0]["dur"] == held[1]["ts"]
    calls = [e["name"] for e in _on(events, tids["state 42"], "i")]
    assert calls == [f"{sh.LP} declares version 1", f"{sh.LP2} declares version 1",
                     "klp_get_prev_state: version 1"]
    var = tids[f"shadow <{sh.A:#x}, 42>"]
    [life] = _on(events, var, "X")
    assert life["args"] == {"obj": f"{sh.A:#x}", "shadow_id": 42, "allocated_by": sh.LP,
                            "freed_by": sh.LP2, "leaked": False}
    assert [e["name"] for e in _on(events, var, "i")] == ["klp_shadow_alloc",
                                                          "klp_shadow_free"]


def test_a_leak_is_flagged_and_drawn_to_the_scenarios_end() -> None:
    sh = shadowed
    tids, events = _klp(sh.result("leaky", sh.leaky()))
    [scenario] = [e for e in events if e.get("cat") == "scenario"]
    for obj in (sh.A, sh.B):
        [life] = _on(events, tids[f"shadow <{obj:#x}, 7>"], "X")
        assert life["args"]["leaked"] is True and life["name"].endswith(" leaked")
        assert life["ts"] + life["dur"] == scenario["ts"] + scenario["dur"]


def test_gets_that_found_nothing_and_problems_are_instants_found_gets_are_not() -> None:
    sh = shadowed
    r = sh.misused()
    for _ in range(100):  # a hot path finding nothing after the free
        r.shadow(sh.ShadowOp.GET, sh.LP, sh.A, 7, addr=None)
    r2 = sh.Rec()
    r2.enable(sh.LP, {}, [])
    r2.shadow(sh.ShadowOp.ALLOC, sh.LP, sh.B, 8)
    for _ in range(100):  # ... and one finding its variable
        r2.shadow(sh.ShadowOp.GET, sh.LP, sh.B, 8)
    tids, events = _klp(sh.result("misused", r), sh.result("found", r2))
    names = [e["name"] for e in _on(events, tids[f"shadow <{sh.A:#x}, 7>"], "i")]
    assert names.count("klp_shadow_get: NULL") == 100
    assert "free of nothing" in names and "get of a freed one" in names
    assert [e["name"] for e in _on(events, tids[f"shadow <{sh.B:#x}, 8>"], "i")] == [
        "klp_shadow_alloc"]


def test_a_hostile_module_name_is_data() -> None:
    sh = shadowed
    tids, events = _klp(sh.result("hostile", sh.hostile()))
    assert f"lp{sh.HOSTILE} v1" in {e["name"] for e in events}
    assert tids["state 9"] and any(e["args"].get("allocated_by") == f"lp{sh.HOSTILE}"
                                   for e in events)
