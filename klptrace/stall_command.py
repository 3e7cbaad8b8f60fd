"""`klptrace stall`: kept apart from the other commands so that it starts fast
(it imports nothing it does not need: a person waits for its first answer)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from klptrace import kmod
from klptrace.errors import KlptraceError, NotSupported, UsageError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: Any) -> int:
    """`klptrace stall`: explain the livepatch transition in progress."""
    import time

    from klptrace import stall as st

    if os.geteuid() != 0:
        raise NotSupported("klptrace stall needs root to read the tasks' kernel stacks",
                           "run it with sudo")
    if not os.path.isdir("/sys/kernel/livepatch"):
        raise NotSupported("this kernel has no livepatch support (/sys/kernel/livepatch)")
    if args.patch and not os.path.isdir(f"/sys/kernel/livepatch/{args.patch}"):
        raise UsageError(f"no livepatch named {args.patch}",
                         "livepatches here: " + (", ".join(kmod.patches()) or "none"))
    deadline = time.monotonic() + args.timeout
    patch = args.patch or st.transition_patch()
    while args.wait and (patch is None or kmod.patch_attr(patch, "transition") != "1"):
        if time.monotonic() > deadline:
            raise KlptraceError(f"no livepatch transition started within {args.timeout:.0f} s")
        time.sleep(0.1)
        patch = args.patch or st.transition_patch()
    if args.watch:
        return _stall_watch(args, patch, deadline)
    rep = st.snapshot(patch)
    if args.format == "json":
        doc = rep.to_json() if rep else {"patch": patch, "in_transition": False}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(st.render_text(rep))
    return 0


def _stall_watch(args: Any, patch: str | None, deadline: float) -> int:
    import time

    from klptrace import stall as st
    from klptrace.recorder import Recorder

    if patch is None:
        sys.stdout.write(st.render_text(None))
        return 0
    tty = sys.stdout.isatty()
    _say(f"Attaching BPF probes to watch {patch}'s transition...")
    seen: dict[int, tuple[st.Task, float]] = {}  # tid -> (task, first seen pending)
    latency: dict[int, float] = {}
    last: st.Report | None = None
    with Recorder([]) as rec:
        t_attach = time.monotonic()
        _say(f"Watching {patch} (Ctrl-C to stop).")
        while True:
            rep = st.snapshot(patch, rec.events)
            now = time.monotonic()
            pending = {t.tid for t in rep.tasks} if rep else set()
            for t in rep.tasks if rep else []:
                seen.setdefault(t.tid, (t, now))
            for tid, (_t, since) in seen.items():
                if tid not in pending and tid not in latency:
                    latency[tid] = now - since
            if rep is None:
                break
            last = rep
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + st.render_text(rep))
            else:
                left = ", ".join(f"{t.comm}:{t.tid} {t.reason} {t.function}".strip()
                                 for t in rep.tasks[:3])
                print(f"{now - t_attach:6.1f} s  tries {rep.tries if rep.tries else '?'}: "
                      f"{len(rep.tasks)} task(s) left: {left}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            if now > deadline:
                break
            rec.poll(1000)
        rec.drain()
        events = list(rec.events)
    completed = kmod.patch_attr(patch, "transition") != "1"
    done = [e for e in events if e.kind.name == "TRANSITION_DONE" and e.patch == patch]
    summary: dict[str, Any] = {
        "patch": patch,
        "direction": last.direction if last else None,
        "completed": completed,
        "result": (f"{done[-1].to_json().get('target', '?')} complete" if done
                   else "in transition" if not completed else "complete"),
        "timeline": st.timeline(events, patch, attached_ns=int(t_attach * 1e9)),
        "tasks": [{"pid": t.pid, "tid": t.tid, "comm": t.comm, "reason": t.reason,
                   "function": t.function,
                   "switch_latency_s": round(latency[tid], 3) if tid in latency else None}
                  for tid, (t, _s) in seen.items()],
    }
    if args.format == "json":
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        lines = [f"{patch}: transition {'complete' if completed else 'still in progress'}",
                 "timeline:"]
        lines += [f"  {i['t_s']:8.3f} s  {i['what']}"
                  + (f", {i['tasks_left']} task(s) left" if "tasks_left" in i else "")
                  for i in summary["timeline"]]
        lines.append("tasks:")
        lines += [f"  {t['comm']}:{t['tid']} {t['reason']} {t['function']} -> switched after "
                  + (f"{t['switch_latency_s']:.1f} s" if t["switch_latency_s"] is not None
                     else "(not switched)") for t in summary["tasks"]]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0 if completed else 1
