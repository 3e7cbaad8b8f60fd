"""`klptrace stall`: why a livepatch transition is stuck, at once; --watch follows it.

It starts fast (a person waits for its first answer): nothing heavier than the
stall report's own modules is imported before the answer, and BPF only with
--watch. The report is klptrace/stall_report.py's, what it means klptrace/stall.py's,
and a watch's page report/html.py's (watch()). It never writes a patch's
attributes: the kernel sends its signal rounds itself and nothing can ask for
one sooner (since Linux kernel commit 0b3d52790e1c ("livepatch: Remove signal
sysfs attribute") (in v5.1), klp_send_signals() is static in transition.c), and
force can break the consistency model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

from klptrace import files
from klptrace.commands import STALL_TIMEOUT_S, line, signals_unwind
from klptrace.errors import KlptraceError, UsageError, signals_checked
from klptrace.events import Event
from klptrace.kernel import kmod
from klptrace.report.markup import terminal
from klptrace.results import Recording, SignalRound, StallWatch, WatchedTask
from klptrace.stall_report import StallReport, StallTask


@dataclasses.dataclass
class StallOptions:
    patch: str | None = None  # default: the livepatch in transition
    watch: bool = False
    wait: bool = False
    timeout: float = STALL_TIMEOUT_S
    format: str = "text"
    output: str | None = None

    def __post_init__(self) -> None:
        # a usage error, before root or the livepatch core is looked at (exit 2, not 4)
        if self.format == "html" and not self.watch:
            raise UsageError("--format html draws a watched transition's timeline",
                             "add --watch, or use --format text or json")


def run(opts: StallOptions) -> int:
    """Explain the livepatch transition in progress (exit 0), or follow it with --watch
    (exit 0 once it completed, 1 if it was still in transition at the timeout or the
    watch's recording cannot be trusted)."""
    from klptrace import stall as st
    from klptrace.kernel import stall as live

    problem = kmod.unsupported(kprobes=opts.watch)
    if problem is not None:
        raise problem
    if opts.patch and not kmod.is_patch(opts.patch):
        raise UsageError(f"no livepatch named {opts.patch}",
                         "livepatches here: " + (", ".join(kmod.patches()) or "none"))
    deadline = time.monotonic() + opts.timeout
    patch = opts.patch or live.transition_patch()
    while opts.wait and (patch is None or kmod.patch_attr(patch, "transition") != "1"):
        if time.monotonic() > deadline:
            raise KlptraceError(f"no livepatch transition started within {opts.timeout:.0f} s")
        time.sleep(0.1)
        patch = opts.patch or live.transition_patch()
    if opts.watch:
        with signals_unwind():
            return _watch(opts, patch, deadline)
    rep = live.snapshot(patch)
    if opts.format == "json":
        doc = rep.to_json() if rep else {"patch": patch, "in_transition": False}
        _write(opts, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    else:
        _write(opts, terminal(st.render_text(rep)))  # a task's comm is its own to choose
    return 0


def _write(opts: StallOptions, text: str) -> None:
    if opts.output:
        files.write_text(opts.output, text)
    else:
        files.write_stdout(text)


@dataclasses.dataclass
class Watched:
    """What a watch saw: each task first seen pending, when it switched, the last report."""

    seen: dict[int, tuple[StallTask, float]] = dataclasses.field(default_factory=dict)
    latency: dict[int, float] = dataclasses.field(default_factory=dict)
    last: StallReport | None = None

    def update(self, rep: StallReport | None, now: float) -> None:
        """Fold in a snapshot (None once the transition is over) taken at now."""
        pending = {t.tid for t in rep.tasks} if rep else set()
        for t in rep.tasks if rep else []:
            self.seen.setdefault(t.tid, (t, now))
        for tid, (_t, since) in self.seen.items():
            if tid not in pending and tid not in self.latency:
                self.latency[tid] = now - since
        if rep is not None:
            self.last = rep


def rounds(patch: str, watched: Watched, events: Sequence[Event],
           attached_ns: int) -> tuple[list[SignalRound], dict[int, int]]:
    """The signal rounds a watch saw (the kernel's, from the recorded tries), and for
    each task that switched, the round it switched after.

    A task switched after the last round before its switch: the try that no
    longer found it (BPF), or else the snapshot that no longer showed it. The
    kernel sends a round at the end of its try, after that try's stack checks.
    """
    from klptrace import stall as st
    from klptrace.story import of

    sent = [(ts, n) for n, ts in st.signal_rounds(events, patch)]
    by_bpf = {s.tid: s.until for s in of(events).stalled if s.switched}
    after: dict[int, int] = {}
    for tid, (_t, since) in watched.seen.items():
        if tid not in watched.latency:
            continue
        moment = by_bpf.get(tid, int((since + watched.latency[tid]) * 1e9))
        before = [i for i, (ts, _n) in enumerate(sent) if ts < moment]
        if before:
            after[tid] = before[-1] + 1
    out = [SignalRound(i, round((ts - attached_ns) / 1e9, 3), n,
                       [f"{t.comm}:{tid}" for tid, (t, _s) in watched.seen.items()
                        if after.get(tid) == i])
           for i, (ts, n) in enumerate(sent, 1)]
    return out, after


def summary(patch: str, watched: Watched, rec: Recording, attached_ns: int,
            completed: bool, watched_s: float = 0.0) -> StallWatch:
    """The watch's answer: the direction, whether it completed, the timeline, each task
    and the signal round it switched after, and why its recording cannot be trusted, if
    it cannot (lost events, a probe not attached: checker.integrity); and for its page,
    what was recorded, the last report, watched_s (how long it watched)."""
    from klptrace import stall as st
    from klptrace.checker import integrity

    events = rec.events
    from klptrace.events import KLP_PATCHED, EventKind

    done = [e.state for e in events if e.kind == EventKind.TRANSITION_DONE and e.patch == patch]
    target = ("?" if not done or done[-1] is None else
              "patched" if done[-1] == KLP_PATCHED else "unpatched")
    last = watched.last
    sent, after = rounds(patch, watched, events, attached_ns)
    return StallWatch(
        patch, last.direction if last else None, completed,
        (f"{target} complete" if done else "in transition" if not completed else "complete"),
        st.timeline(events, patch, attached_ns=attached_ns),
        [WatchedTask(t.pid, t.tid, t.comm, t.reason, t.function,
                     round(watched.latency[tid], 3) if tid in watched.latency else None,
                     after.get(tid))
         for tid, (t, _s) in watched.seen.items()],
        rec, last, watched_s, os.uname().release, sent, integrity(rec))


def render_summary(s: StallWatch) -> str:
    """The watch's summary for a person."""
    from klptrace.stall import timeline_line

    lines = [f"{s.patch}: transition {'complete' if s.completed else 'still in progress'}",
             "timeline:"]
    lines += [f"  {timeline_line(i)}" for i in s.timeline]
    lines.append("tasks:")
    lines += [f"  {t.comm}:{t.tid} {t.reason} {t.function} -> switched after "
              + (f"{t.switch_latency_s:.1f} s" if t.switch_latency_s is not None
                 else "(not switched)")
              + (f", after signal round {t.after_round}" if t.after_round else "")
              for t in s.tasks]
    if s.rounds:
        lines.append("signal rounds:")
        lines += [f"  {r.number}: {r.t_s:8.3f} s  at the end of try {r.try_number}; "
                  f"switched after it: {', '.join(r.switched) or 'none'}" for r in s.rounds]
    return "\n".join(lines) + "\n"


def _watch(opts: StallOptions, patch: str | None, deadline: float) -> int:
    from klptrace import stall as st
    from klptrace.kernel import stall as live
    from klptrace.record.recorder import Recorder

    if patch is None:
        _write(opts, st.render_text(None))
        return 0
    tty = sys.stdout.isatty() and not opts.output and opts.format == "text"
    line(f"Attaching BPF probes to watch {patch}'s transition...")
    watched = Watched()
    stopped: KeyboardInterrupt | None = None
    with signals_checked(), Recorder([]) as rec:  # unwound at its polls (errors.py)
        t_attach = time.monotonic()
        line(f"Watching {patch} (Ctrl-C to stop).")
        try:
            while True:
                rep = live.snapshot(patch, rec.events)
                now = time.monotonic()
                watched.update(rep, now)
                if rep is None:
                    break
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J" + terminal(st.render_text(rep)))
                    sys.stdout.flush()
                else:
                    left = ", ".join(f"{t.comm}:{t.tid} {t.reason} {t.function}".strip()
                                     for t in rep.tasks[:3])
                    tries = rep.tries if rep.tries else "?"
                    line(terminal(f"{now - t_attach:6.1f} s  tries {tries}: "
                                  f"{len(rep.tasks)} task(s) left: {left}"))
                if now > deadline:
                    break
                rec.poll(1000)
        except KeyboardInterrupt as e:  # Ctrl-C ends the watch: what was seen is still told
            stopped = e
            line("stopped watching; what was seen so far:")
        recording = rec.recording()  # drained, with the lost count and each probe
    completed = kmod.patch_attr(patch, "transition") != "1"
    s = summary(patch, watched, recording, int(t_attach * 1e9), completed,
                time.monotonic() - t_attach)
    for problem in s.problems:
        line(f"the watch's recording cannot be trusted: {problem}")
    if opts.format == "json":
        _write(opts, json.dumps(s.to_json(), indent=1, allow_nan=False) + "\n")
    elif opts.format == "html":
        from klptrace.report import html

        _write(opts, html.watch(s))
    else:
        _write(opts, terminal(render_summary(s)))
    if stopped is not None:
        raise stopped
    return 0 if completed and not s.problems else 1
