"""`klptrace stall` offline: a fake /proc and /sys/kernel/livepatch stand in for the kernel."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from klptrace import cli
from klptrace.commands import stall as stall_cmd
from klptrace.events import Event, EventKind
from klptrace.kernel import kmod, stall
from klptrace.results import Probe, Recording

WORKER_STACK = ("[<0>] msleep+0x2d/0x40\n"
                "[<0>] klptrace_busy_work_func+0x3f/0x70 [klptrace_busy]\n"
                "[<0>] process_one_work+0x1c7/0x380\n[<0>] worker_thread+0x4d/0x380\n")


def _task(proc: Path, pid: int, tid: int, comm: str, state: str, patch_state: int,
          stack: str, kthread: bool) -> None:
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    flags = 0x00200000 if kthread else 0  # PF_KTHREAD
    (d / "stat").write_text(f"{tid} ({comm}) {state} 2 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 "
                            "0 152 0 0\n")  # the first 24 of its 52 fields
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nState:\t{state} (x)\n"
                              "voluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t1\n")
    (d / "stack").write_text(stack)
    (d / "patch_state").write_text(f"{patch_state}\n")


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernel with klptrace_lp patching: its worker blocks, a shell has switched."""
    proc, sysfs = tmp_path / "proc", tmp_path / "livepatch"
    _task(proc, 61, 61, "kworker/1:1", "D", 0, WORKER_STACK, kthread=True)
    _task(proc, 300, 300, "sh", "S", 1, "[<0>] do_wait+0x1/0x2\n", kthread=False)
    _task(proc, 301, 301, "idle-ish", "S", -1, "", kthread=False)  # not a livepatch task
    patch = sysfs / "klptrace_lp"
    (patch / "klptrace_busy" / "klptrace_busy_work_func,1").mkdir(parents=True)
    (patch / "enabled").write_text("1\n")
    (patch / "transition").write_text("1\n")
    monkeypatch.setattr(stall, "PROC", str(proc))
    monkeypatch.setattr(kmod, "LIVEPATCH_SYSFS", sysfs)
    monkeypatch.setattr(kmod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(stall, "kernel_log", lambda: [
        (100.0, "livepatch: 'klptrace_lp': starting patching transition")])
    return tmp_path


def test_the_report_names_the_blocking_worker(machine: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stall", "--format", "json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["patch"], rep["direction"], rep["in_transition"]) == ("klptrace_lp", "patching",
                                                                      True)
    [worker] = rep["tasks"]  # the shell has switched; the other task is not a livepatch one
    assert (worker["comm"], worker["tid"], worker["kthread"]) == ("kworker/1:1", 61, True)
    assert (worker["reason"], worker["function"]) == ("sleeping on function",
                                                      "klptrace_busy_work_func")
    assert any("kernel thread" in s for s in rep["next_steps"])
    assert any("echo 0 > /sys/kernel/livepatch/klptrace_lp/enabled" in s
               for s in rep["next_steps"])


def test_the_text_report(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stall"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("klptrace_lp: patching transition in progress")
    assert "kworker/1:1:61 (kthread) sleeping on function klptrace_busy_work_func()" in out


def test_no_transition_and_an_unknown_patch(machine: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (machine / "livepatch" / "klptrace_lp" / "transition").write_text("0\n")
    assert cli.main(["stall"]) == 0
    assert capsys.readouterr().out == "no livepatch transition in progress\n"
    assert cli.main(["stall", "--format", "json", "klptrace_lp"]) == 0
    assert json.loads(capsys.readouterr().out) == {"patch": "klptrace_lp",
                                                   "in_transition": False}
    assert cli.main(["stall", "nope"]) == 2
    assert "no livepatch named nope" in capsys.readouterr().err


def test_html_needs_a_watch(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stall", "--format", "html"]) == 2
    assert "add --watch" in capsys.readouterr().err


def test_a_watch_s_summary_and_page(machine: Path) -> None:
    # what a watch saw: the worker pending at two snapshots, then the transition over
    rep = stall.snapshot("klptrace_lp")
    assert rep is not None
    watched = stall_cmd.Watched()
    watched.update(rep, 10.0)
    watched.update(rep, 11.0)
    watched.update(None, 12.5)
    s = 1_000_000_000
    events = [Event(EventKind.TRANSITION_TRY, 9 * s, patch="klptrace_lp", state=1, ret=3),
              Event(EventKind.TASK_BLOCKED, 9 * s + 1, tid=61, comm="kworker/1:1", ret=-98,
                    patch="klptrace_lp", object="klptrace_busy_work_func"),
              Event(EventKind.TRANSITION_DONE, 12 * s, patch="klptrace_lp", state=1)]
    summary = stall_cmd.summary("klptrace_lp", watched, Recording(events), 8 * s,
                                completed=True)
    assert summary.result == "patched complete" and summary.completed
    assert [i.what for i in summary.timeline] == [
        "klptrace attached (the transition had started)", "try 4", "complete (patching)"]
    [t] = summary.tasks
    assert (t.tid, t.switch_latency_s) == (61, 2.5)
    text = stall_cmd.render_summary(summary)
    assert "kworker/1:1:61 sleeping on function klptrace_busy_work_func -> switched after " \
           "2.5 s" in text
    assert summary.report is rep and summary.recording.events == events
    from klptrace import stall as analysis
    from klptrace.report import html

    page = html.watch(dataclasses.replace(summary, watched_s=4.5))
    # one section, the watch's, passed: its timeline, its report with the watch's story
    assert page.count("<section ") == 1
    assert ('<section class="scenario pass" id="stall-klptrace_lp">'
            '\n<h2><span class="badge pass">✓ PASS</span> <span class="mono">stall '
            'klptrace_lp</span><span class="sub">4.50 s · 3 events</span></h2>') in page
    assert "stall klptrace_lp" in page and "<svg" in page and "klptrace_busy_work_func" in page
    story = page[page.index("<summary>the transition's story</summary><pre>"):]
    story = story[story.index("<pre>") + 5:story.index("</pre>")]
    assert story == html._e("\n".join(analysis.timeline_line(i, tasks=True)
                                      for i in summary.timeline))


def test_a_watch_whose_recording_lost_events_is_not_trusted(machine: Path) -> None:
    # a watch that saw the transition complete, but whose ring buffer overflowed and one of
    # whose probes did not attach: its story may miss a signal round or a switch
    from klptrace.report import html

    rep = stall.snapshot("klptrace_lp")
    watched = stall_cmd.Watched()
    watched.update(rep, 10.0)
    watched.update(None, 11.0)
    events = [Event(EventKind.TRANSITION_DONE, 9 * 10**9, patch="klptrace_lp", state=1)]
    rec = Recording(events, 3, [Probe("kprobe:klp_shadow_get", "klp_shadow_get", False,
                                      "not attached: no such symbol")])
    s = stall_cmd.summary("klptrace_lp", watched, rec, 8 * 10**9, completed=True)
    assert s.completed and s.problems == [
        "3 events were lost (the BPF ring buffer was full)",
        "probe kprobe:klp_shadow_get did not attach: not attached: no such symbol"]
    assert s.to_json()["problems"] == s.problems
    page = html.watch(s)
    assert '<section class="scenario error" id="stall-klptrace_lp">' in page
    assert "the recording cannot be trusted: 3 events were lost" in page
    # a whole recording says nothing of it
    whole = stall_cmd.summary("klptrace_lp", watched, Recording(events), 8 * 10**9, True)
    assert not whole.problems and "problems" not in whole.to_json()


def test_a_watch_that_ended_in_transition_has_a_failed_page(machine: Path) -> None:
    from klptrace.report import html

    rep = stall.snapshot("klptrace_lp")
    watched = stall_cmd.Watched()
    watched.update(rep, 10.0)
    events = [Event(EventKind.TRANSITION_START, 8 * 10**9, patch="klptrace_lp", state=1),
              Event(EventKind.TRANSITION_TRY, 9 * 10**9, patch="klptrace_lp", state=1, ret=3)]
    s = stall_cmd.summary("klptrace_lp", watched, Recording(events), 8 * 10**9, completed=False)
    page = html.watch(s)
    assert '<section class="scenario fail" id="stall-klptrace_lp">' in page
    assert ('<div class="explain">klptrace_lp was still in transition when the watch '
            "ended</div>") in page
    assert "<b>klptrace_lp: patching transition, in transition for " in page
    assert '<details class="transcripts" open>' in page  # what was recorded, at once
    assert "starting patching transition" in page


def test_a_watch_s_json_is_the_typed_answer_s(machine: Path) -> None:
    """`stall --watch --format json` writes StallWatch.to_json(): the fields as before."""
    rep = stall.snapshot("klptrace_lp")
    watched = stall_cmd.Watched()
    watched.update(rep, 10.0)
    watched.update(None, 12.5)
    s = 1_000_000_000
    events = [Event(EventKind.TRANSITION_TRY, 9 * s, patch="klptrace_lp", state=1, ret=0)]
    doc = stall_cmd.summary("klptrace_lp", watched, Recording(events), 8 * s,
                            completed=False).to_json()
    assert list(doc) == ["patch", "direction", "completed", "result", "timeline", "tasks"]
    assert (doc["direction"], doc["completed"], doc["result"]) == ("patching", False,
                                                                   "in transition")
    assert doc["timeline"][1] == {"t_s": 1.0, "what": "try 1", "tasks_left": 0}
    assert doc["tasks"] == [{"pid": 61, "tid": 61, "comm": "kworker/1:1",
                             "reason": "sleeping on function",
                             "function": "klptrace_busy_work_func", "switch_latency_s": 2.5}]


def test_a_watch_that_never_saw_the_transition_in_progress(machine: Path) -> None:
    """The page still draws the transition: its report names the patch, not a direction."""
    from klptrace.report import html

    watched = stall_cmd.Watched()
    watched.update(None, 1.0)
    events = [Event(EventKind.TRANSITION_DONE, 5, patch="klptrace_lp", state=1)]
    s = stall_cmd.summary("klptrace_lp", watched, Recording(events), 1, completed=True)
    assert s.direction is None and s.tasks == [] and s.result == "patched complete"
    assert s.report is None
    assert "<b>klptrace_lp: ? transition</b>" in html.watch(s)


class _Recorder:
    """Stands in for the BPF recorder of a watch: at its first poll the kernel tries and
    finds the worker in klptrace_busy_work_func; at the next the worker has left, and the
    transition completes."""

    def __init__(self, machine: Path) -> None:
        self.transition = machine / "livepatch" / "klptrace_lp" / "transition"
        self.events: list[Event] = []

    def __call__(self, _livepatch_modules: object) -> _Recorder:
        return self

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def poll(self, _ms: int) -> None:
        now = time.monotonic_ns()
        if not self.events:
            self.events += [
                Event(EventKind.TRANSITION_TRY, now, patch="klptrace_lp", state=1, ret=0),
                Event(EventKind.TASK_BLOCKED, now + 1, tid=61, comm="kworker/1:1", ret=-98,
                      patch="klptrace_lp", object="klptrace_busy_work_func")]
        else:
            self.transition.write_text("0\n")
            self.events.append(Event(EventKind.TRANSITION_DONE, now, patch="klptrace_lp",
                                     state=1))

    def recording(self) -> Recording:
        """What was recorded, whole: nothing lost, every probe attached."""
        return Recording(list(self.events), 0, [Probe("kprobe:klp_enable_patch",
                                                      "klp_enable_patch", True)])


@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_a_watch_follows_the_transition_to_its_end(machine: Path, fmt: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`klptrace stall --watch`, its BPF recorder faked: the watch ends when the
    transition does, and says so in each format."""
    from klptrace.record import recorder

    monkeypatch.setattr(recorder, "Recorder", _Recorder(machine))
    monkeypatch.setattr(kmod, "unsupported", lambda **_kw: None)
    out = machine / f"watch.{fmt}"
    assert cli.main(["stall", "--watch", "--format", fmt, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Watching klptrace_lp (Ctrl-C to stop)." in err
    assert "1 task(s) left: kworker/1:1:61 sleeping on function klptrace_busy_work_func" in err
    text = out.read_text()
    if fmt == "text":
        assert text.startswith("klptrace_lp: transition complete\ntimeline:\n")
        assert "kworker/1:1:61 sleeping on function klptrace_busy_work_func -> switched " \
               "after " in text
    elif fmt == "json":
        doc = json.loads(text)
        assert (doc["direction"], doc["completed"], doc["result"]) == (
            "patching", True, "patched complete")
        assert [i["what"] for i in doc["timeline"]] == [
            "klptrace attached (the transition had started)", "try 1", "complete (patching)"]
        [t] = doc["tasks"]
        assert t["tid"] == 61 and t["switch_latency_s"] is not None
    else:
        assert '<section class="scenario pass" id="stall-klptrace_lp">' in text
        assert "<b>klptrace_lp: patching transition, in transition for " in text
        assert "try 1, 1 task(s) left: kworker/1:1:61 sleeping on function " \
               "klptrace_busy_work_func" in text


# --- kinds, sleeps, next steps; the kernel's signal rounds (issue 22) ----------------------

READER_STACK = ("[<0>] klptrace_block_read+0x3f/0x70 [klptrace_block]\n"
                "[<0>] vfs_read+0x9d/0x190\n[<0>] ksys_read+0x5f/0xe0\n")


@pytest.fixture
def two(machine: Path) -> Path:
    """The worker, and a user task sleeping interruptibly in another patched function; a
    v6.16 kernel's kallsyms."""
    _task(machine / "proc", 400, 400, "cat", "S", 0, READER_STACK, kthread=False)
    (machine / "livepatch" / "klptrace_lp" / "klptrace_block" / "klptrace_block_read,1").mkdir(
        parents=True)
    (machine / "proc" / "kallsyms").write_text("ffffffff81123450 T __klp_sched_try_switch\n")
    return machine


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What klptrace writes to kernel files: the one writer, recorded instead."""
    from klptrace.kernel import kernelfs

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(kernelfs, "write",
                        lambda path, value, append=False: seen.append((path, value)) or 0)
    return seen


def test_each_task_s_kind_sleep_and_next_step(
        two: Path, writes: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stall", "--format", "json"]) == 0
    assert writes == []  # it only reads
    rep = json.loads(capsys.readouterr().out)
    assert (rep["sched"], rep["next_signal_try"], rep["next_signal_in_s"]) == (
        "__schedule", None, None)  # no BPF: which try is next is not known
    worker, cat = sorted(rep["tasks"], key=lambda t: t["tid"])
    assert (worker["kind"], worker["sleep"], worker["function"], worker["reason"]) == (
        "kthread", "uninterruptible", "klptrace_busy_work_func", "sleeping on function")
    assert "only klptrace_busy_work_func() returning" in worker["next_step"]
    assert "it waits in msleep() for a timer" in worker["next_step"]
    assert (cat["kind"], cat["sleep"], cat["function"]) == ("user", "interruptible",
                                                            "klptrace_block_read")
    assert "which the kernel sends itself" in cat["next_step"]
    assert "--signal" not in cat["next_step"]
    assert "unknown without BPF" in cat["next_step"]
    assert cli.main(["stall"]) == 0
    text = capsys.readouterr().out
    assert "  next signal round: unknown without BPF" in text
    cat_lines = text[text.index("cat:400 (task) sleeping on function klptrace_block_read(), "
                                "blocking "):].splitlines()
    assert cat_lines[1:3] == ["      interruptible (S)", "      next step: " + cat["next_step"]]


@pytest.mark.parametrize("argv", [["stall", "--signal"],
                                  ["stall", "--watch", "--signal", "--format", "json"]])
def test_there_is_no_signal_option(two: Path, writes: list[tuple[str, str]],
                                   capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """The patch's signal attribute is gone since 0b3d52790e1c (v5.1): `--signal` is a
    usage error like any unknown option, and --help says why there is none."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("klptrace: error: unrecognized arguments: --signal\n  hint: ")
    assert "Traceback" not in err and writes == []
    with pytest.raises(SystemExit) as exc:
        cli.main(["stall", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "\nno --signal: the kernel signals the remaining tasks itself at try 16 and every 15 " \
           "tries after (transition.c); the `signal` attribute was removed by 0b3d52790e1c " \
           "(v5.1)\n" in text
    assert "  --signal" not in text  # no such option listed


def test_a_watch_records_each_signal_round_and_who_switched_after_it(two: Path) -> None:
    rep = stall.snapshot("klptrace_lp")
    assert rep is not None
    s = 1_000_000_000
    watched = stall_cmd.Watched()
    watched.update(rep, 1.0)
    watched.update(None, 32.0)  # both gone by then
    events = []
    for n in range(1, 32):  # the worker and cat blocked at tries 1 to 31 (try n at n s)
        events += [Event(EventKind.TRANSITION_TRY, n * s, patch="klptrace_lp", state=1,
                         ret=n - 1),
                   Event(EventKind.TASK_BLOCKED, n * s + 1, tid=400, comm="cat", ret=-98,
                         patch="klptrace_lp", object="klptrace_block_read")]
        if n < 17:  # the worker: found at tries 1 to 16, switched by try 17
            events.append(Event(EventKind.TASK_BLOCKED, n * s + 2, tid=61,
                                comm="kworker/1:1", ret=-98, patch="klptrace_lp",
                                object="klptrace_busy_work_func"))
    summary = stall_cmd.summary("klptrace_lp", watched, Recording(events), 0, completed=True)
    assert [(r.number, r.t_s, r.try_number, r.switched) for r in summary.rounds] == [
        (1, 16.0, 16, ["kworker/1:1:61"]), (2, 31.0, 31, ["cat:400"])]
    by_tid = {t.tid: t for t in summary.tasks}
    assert (by_tid[61].after_round, by_tid[400].after_round) == (1, 2)
    assert by_tid[400].switch_latency_s == 31.0
    doc = summary.to_json()
    assert doc["rounds"][0] == {"number": 1, "t_s": 16.0, "try_number": 16,
                                "switched": ["kworker/1:1:61"]}
    assert {t["tid"]: t["after_round"] for t in doc["tasks"]} == {61: 1, 400: 2}
    text = stall_cmd.render_summary(summary)
    assert "kworker/1:1:61 sleeping on function klptrace_busy_work_func -> switched after " \
           "31.0 s, after signal round 1" in text
    assert "signal rounds:\n  1:   16.000 s  at the end of try 16; switched after it: " \
           "kworker/1:1:61\n  2:   31.000 s  at the end of try 31; switched after it: " \
           "cat:400\n" in text
    from klptrace.report import html

    page = html.watch(summary)
    assert "<h3>Signal rounds</h3>" in page and "<td>end of try 31</td>" in page
    assert "--signal" not in page
    assert "<th>sleep</th><th>next step</th>" in page and "<td>interruptible</td>" in page
    # each task's lane says its kind and sleep, from the report
    assert "klptrace_block_read() · not switched at 31 tries" in page
    assert "· user, interruptible" in page and "· kthread, uninterruptible" in page
