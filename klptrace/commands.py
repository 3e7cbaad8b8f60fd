"""What the list, run and check subcommands do; cli.py only parses and dispatches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from klptrace import checker, files, kmod, kmsg, report, results, scenario, sysinfo
from klptrace.errors import KlptraceError, NotSupported, UsageError, interrupt
from klptrace.recorder import Recording, RecordingError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scenarios_for(ids: list[str], directory: str | None) -> list[scenario.Scenario]:
    """The selected scenarios from klptrace's own set or a user's directory."""
    return scenario.select(scenario.load_dir(directory or scenario.BUILTIN_DIR), ids)


def list_text(scs: list[scenario.Scenario]) -> str:
    width = max(len(s.id) for s in scs)
    return "".join(f"{s.id:<{width}}  {s.title}\n" for s in scs)


def module_dir(explicit: str | None, needed: list[str]) -> Path:
    """Where the test modules for the running kernel are, building them if headers exist."""
    from klptrace import assets
    from klptrace.lab import kernels

    if explicit:
        d = Path(explicit)
    else:
        rel = os.uname().release
        kdir = Path(f"/lib/modules/{rel}/build")
        d = kernels.cache_dir() / "modules" / rel
        if not all((d / f"{m}.ko").is_file() for m in needed) and (kdir / "Makefile").is_file():
            d = assets.build_modules(kdir=kdir).dir
    missing = [m for m in needed if not (d / f"{m}.ko").is_file()]
    if missing:
        raise NotSupported(
            f"no built test modules for this kernel in {d} (missing {', '.join(missing)})",
            "install this kernel's headers and run `klptrace build`, or pass --modules DIR")
    return d


def _refuse_foreign(scs: list[scenario.Scenario]) -> list[str]:
    """Reasons not to run on this machine: a module of ours already loaded, a foreign transition."""
    ours = {m for s in scs for m in s.modules}
    problems = [f"module {m} is already loaded and klptrace did not load it: "
                f"unload it first (rmmod {m})" for m in sorted(ours) if kmod.is_loaded(m)]
    foreign = [p for p in kmod.patches() if p not in ours]
    for p in foreign:
        if kmod.patch_attr(p, "transition") == "1":
            problems.append(f"livepatch {p} is in transition: wait until "
                            f"/sys/kernel/livepatch/{p}/transition reads 0")
    return problems


def run_local(args: Any) -> int:
    """`klptrace run` on the running kernel, cleaning up after SIGINT and SIGTERM too."""
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_local(args)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run_local(args: Any) -> int:
    from klptrace import probes

    scs = scenarios_for(args.ids, args.scenarios)
    try:
        probes.check_kernel()
    except NotSupported as e:
        _say(f"klptrace: skip: {e}")
        return 4
    watch = kmsg.OopsWatch()  # from the start: an oops during setup counts too
    actor = kmod.Actor()  # forked before bcc is loaded: the child holds no BPF program
    try:
        return _run_with(args, scs, actor, watch)
    finally:
        actor.close()
        watch.close()


class _Stream:
    """The results of a run as they come, one JSON object a line (for `run --vm`):
    a panic or a wedged kernel loses nothing already recorded."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if path else None

    def put(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(record) + "\n").encode())
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _run_with(args: Any, scs: list[scenario.Scenario], actor: kmod.Actor,
              watch: kmsg.OopsWatch) -> int:
    from klptrace import probes, runner
    from klptrace.recorder import Recorder

    _say("Compiling klptrace's BPF probes...")
    build = probes.Build()  # compiles while the checks below run
    problems = _refuse_foreign(scs)
    if problems:
        raise KlptraceError("refusing to run: " + "; ".join(problems))
    foreign = [p for p in kmod.patches() if p not in {m for s in scs for m in s.modules}]
    skipped: dict[str, str] = {}
    if foreign and args.allow_replace and any(s.replaces_all for s in scs):
        _say(f"klptrace: warning: atomic-replace will replace {', '.join(foreign)}, "
             "which klptrace did not load (--allow-replace)")
    if foreign and not args.allow_replace:
        for s in scs:
            if s.replaces_all:
                skipped[s.id] = (f"would replace the livepatches already on this machine "
                                 f"({', '.join(foreign)}); pass --allow-replace to run it anyway")
    needed = sorted({m for s in scs for m in s.modules})
    mods = module_dir(args.modules, needed)
    kos = sorted({str(mods / f"{lp}.ko") for s in scs for lp in s.livepatches})
    docs: list[dict[str, Any]] = []
    stream = _Stream(getattr(args, "stream", None))
    with kmsg.devkmsg_unlimited(), kmsg.livepatch_debug() as debug, \
            Recorder(kos, build) as rec:
        klog = kmsg.KernelLog() if debug else None
        if not debug:
            _say("klptrace: dynamic debug is not available: dmesg is not compared")
        p = rec.probes
        _say(f"Tracing livepatch events (bcc import {p.import_s:.1f} s, layout {p.layout_s:.1f} s, "
             f"compile {p.compile_s:.1f} s, attach {p.attach_s:.1f} s).")
        timing = {k: round(getattr(p, k), 3)
                  for k in ("import_s", "layout_s", "compile_s", "attach_s")}
        stream.put({"start": {"kernel": os.uname().release, "timing": timing,
                              "kernel_info": sysinfo.running_kernel(),
                              "probes": [x.to_json() for x in p.status]}})
        run = runner.Runner(rec, str(mods), actor, watch, timeout_s=args.timeout, log=_say,
                            klog=klog)
        wedged_by = ""
        for s in [s for _ in range(args.repeat) for s in scs]:
            if run.wedged:
                if not wedged_by:
                    wedged_by = docs[-1]["id"]
                    _say(f"klptrace: {run.wedged} in {wedged_by}: the remaining scenarios "
                         "are not run (reboot first)")
                    stream.put({"wedged": run.wedged})
                if getattr(args, "stream", None):
                    break  # `run --vm` boots a fresh guest for the rest
                docs.append(_skipped(s, f"not run: {run.wedged} in {wedged_by}; reboot, "
                                        "then run it"))
                continue
            if s.id in skipped:
                docs.append(_skipped(s, skipped[s.id]))
                stream.put({"scenario": docs[-1]})
                _say(f"  {s.id}: SKIP ({skipped[s.id]})")
                continue
            stream.put({"begin": s.id})
            r = run.run(s)
            docs.append(r.to_json())
            stream.put({"scenario": docs[-1]})
            _say(f"  {s.id}: {r.status.upper()} ({r.duration_s:.1f} s)")
            if r.oops:
                _say("\n".join(f"    {line}" for line in kmsg.Oops(r.oops, True).summary))
        lost = rec.lost()  # and raises a signal that a callback swallowed
        status = [x.to_json() for x in p.status]
        rec.wedged = run.wedged
    leftovers = getattr(rec, "leftovers", [])
    stream.put({"end": {"lost_events": lost, "probes": status, "leftovers": leftovers}})
    stream.close()
    doc = results.run_document(os.uname().release, docs, lost, status, timing=timing,
                               leftovers=leftovers, kernel_info=sysinfo.running_kernel())
    code = results.exit_status(doc) if getattr(args, "stream", None) else _emit(doc, args)
    if leftovers:
        _say("klptrace: could not remove: " + "; ".join(leftovers))
        return 1
    return code


def _skipped(s: scenario.Scenario, why: str) -> dict[str, Any]:
    return {"id": s.id, "status": checker.SKIP, "duration_s": 0.0, "lost_events": 0,
            "events": [], "expected": list(s.expect), "recorded": [], "explanation": why,
            "diff": [], "problems": [], "notes": []}


def _emit(doc: dict[str, Any], args: Any) -> int:
    doc = _account_lost(doc)
    failed: KlptraceError | None = None
    if getattr(args, "record", None):
        try:
            files.write_text(args.record, json.dumps(doc, indent=1) + "\n")
        except KlptraceError as e:
            failed = e  # the results still go where they were asked to
    text = report.render(args.format, doc,
                         kcidb_origin=getattr(args, "kcidb_origin", "klptrace"))
    if args.output:
        files.write_text(args.output, text)
    else:
        files.write_stdout(text)
    if failed:
        raise failed
    return results.exit_status(doc)


def _account_lost(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with events lost outside every scenario's own count made each one's error.

    The BPF ring buffer's lost counter is global; a scenario's share is what it
    grew by during that scenario. Events lost that no share accounts for may
    belong to any scenario's recording, so none of them can pass.
    """
    scs = doc["scenarios"]
    own = sum(s.get("lost_events", 0) for s in scs)
    unaccounted = doc["lost_events"] - own
    if unaccounted <= 0:
        return doc
    why = (f"{unaccounted} events were lost that no scenario accounts for (lost_events "
           f"{doc['lost_events']} in all, {own} in the scenarios): this recording may lack some")
    marked = []
    for s in scs:
        if s["status"] != checker.SKIP:
            problems = [*s.get("problems", []), why]
            s = {**s, "status": checker.ERROR, "problems": problems,
                 "explanation": "the recording cannot be trusted: " + "; ".join(problems)}
        marked.append(s)
    rest = {k: v for k, v in doc.items()
            if k not in ("kernel", "lost_events", "probes", "scenarios", "totals")}
    return results.run_document(doc["kernel"], marked, doc["lost_events"], doc["probes"], **rest)


def run_vm(args: Any) -> int:
    """`klptrace run --vm`: the same run inside the lab VM, results rendered here.

    The guest streams each scenario's result as it finishes. When its kernel
    oopses (the livepatch core is then wedged), panics or the guest dies, what
    finished is kept, the scenario in progress is an error, and a fresh guest
    runs the remaining scenarios.
    """
    from klptrace import assets
    from klptrace.lab import kernels, vm

    scs = scenarios_for(args.ids, args.scenarios)  # a usage error before any download
    kernel = kernels.ensure(args.kernel, progress=_say)
    built = assets.build_modules(kernel, say=_say)
    sequence = [s for _ in range(args.repeat) for s in scs]
    with tempfile.TemporaryDirectory(prefix="klptrace-results-", dir="/tmp") as rw:
        mods = _stage_modules(Path(rw) / "modules", built.dir, args.modules, scs)
        scen = _stage_scenarios(Path(rw) / "scenarios", args.scenarios)
        docs: list[dict[str, Any]] = []
        top: dict[str, Any] = {"lost": 0, "probes": None, "timing": None, "leftovers": []}
        boots = 0
        while len(docs) < len(sequence):
            boots += 1
            if boots > 1:
                _say(f"klptrace: booting a fresh guest for the {len(sequence) - len(docs)} "
                     "remaining scenario(s)")
            stream = Path(rw) / f"stream-{boots}.jsonl"
            argv = [sys.executable, "-m", "klptrace", "run",
                    *[s.id for s in sequence[len(docs):]], "--stream", str(stream),
                    "--modules", str(mods), "--timeout", str(args.timeout)]
            if scen:
                argv += ["--scenarios", str(scen)]
            if args.allow_replace:
                argv.append("--allow-replace")
            died = ""
            try:
                guest_status = vm.run(kernel, argv, cpus=args.cpus, memory=args.memory,
                                      rwdirs=[Path(rw)], say=_say,
                                      done=lambda f=stream: _stream_ended(f))
            except KlptraceError as e:  # a panic, a guest that stopped: not a signal
                died, guest_status = e.message, None
            got = _read_stream(stream)
            if got["start"] is None and not got["docs"]:
                raise KlptraceError(
                    f"the run in the guest wrote no results (exit status {guest_status})"
                    + (f": {died}" if died else ""), "see the guest's output above")
            _merge_boot(top, got)
            docs += got["docs"]
            if got["begun"] is not None and len(docs) < len(sequence):
                # the guest died in the middle of this scenario
                why = died or f"the guest stopped during it (exit status {guest_status})"
                docs.append(_errored(sequence[len(docs)], why))
                _say(f"  {docs[-1]['id']}: ERROR ({why})")
            elif not got["wedged"] and len(docs) < len(sequence):
                raise KlptraceError(
                    f"the guest stopped after {len(docs)} of {len(sequence)} scenarios "
                    f"(exit status {guest_status})" + (f": {died}" if died else ""),
                    "see the guest's output above")
        doc = results.run_document(kernel.release, docs, top["lost"], top["probes"] or [],
                                   timing=top["timing"] or {}, leftovers=top["leftovers"],
                                   boots=boots, kernel_info=top.get("kernel_info", {}))
    return _emit(doc, args)


def _stage_modules(dest: Path, built: Path, user: str | None,
                   scs: list[scenario.Scenario]) -> Path:
    """One directory the guest reads the modules from: klptrace's, then the user's over them."""
    dest.mkdir()
    sources = [built] + ([Path(user)] if user else [])
    for d in sources:
        if not d.is_dir():
            raise UsageError(f"--modules {d}: not a directory")
        for ko in d.glob("*.ko"):
            shutil.copy2(ko, dest / ko.name)
    missing = sorted({m for s in scs for m in s.modules if not (dest / f"{m}.ko").is_file()})
    if missing:
        raise UsageError(f"no module file for {', '.join(missing)} in "
                         + " or ".join(str(d) for d in sources),
                         "build your modules for this kernel and pass --modules DIR")
    return dest


def _stage_scenarios(dest: Path, user: str | None) -> Path | None:
    """A copy of the user's scenario files, which the guest may not see where they are."""
    if not user:
        return None
    dest.mkdir()
    for f in sorted(Path(user).glob("*.toml")):
        shutil.copy2(f, dest / f.name)
    return dest


def _read_stream(path: Path) -> dict[str, Any]:
    """What one guest boot's stream says: its start, the results, and how it ended."""
    got: dict[str, Any] = {"start": None, "docs": [], "begun": None, "wedged": "", "end": None}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # the line being written when the guest died
        if "start" in rec:
            got["start"] = rec["start"]
        elif "begin" in rec:
            got["begun"] = rec["begin"]
        elif "scenario" in rec:
            got["docs"].append(rec["scenario"])
            got["begun"] = None
        elif "wedged" in rec:
            got["wedged"] = rec["wedged"]
        elif "end" in rec:
            got["end"] = rec["end"]
    return got


def _stream_ended(path: Path) -> bool:
    """Whether the guest's run has written its last record (read from the file's tail)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            tail = f.read()
    except OSError:
        return False
    return tail.startswith(b'{"end": ') or b'\n{"end": ' in tail


def _merge_boot(top: dict[str, Any], got: dict[str, Any]) -> None:
    """Fold one boot's totals into the run's: lost events add up, probes and timing of
    the first boot (with any probe that failed in a later one), leftovers collected."""
    start, end = got["start"] or {}, got["end"] or {}
    probes = end.get("probes", start.get("probes", []))
    if top["probes"] is None:
        top["probes"], top["timing"] = probes, start.get("timing", {})
        top["kernel_info"] = start.get("kernel_info", {})
    else:
        top["probes"] += [p for p in probes if not p.get("ok")]
    top["lost"] += int(end.get("lost_events", 0))
    top["leftovers"] += end.get("leftovers", [])


def _errored(s: scenario.Scenario, why: str) -> dict[str, Any]:
    return {**_skipped(s, why), "status": checker.ERROR, "problems": [why]}


def check(args: Any) -> int:
    """`klptrace check RECORDING`: re-check a saved run offline."""
    raw = files.read_text(args.recording, RecordingError,
                          "check reads a file written by `klptrace run --record FILE`")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RecordingError(f"{args.recording}: not JSON (line {e.lineno}, column {e.colno}): "
                             f"{e.msg}", "was the file truncated?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenarios"), list):
        raise RecordingError(f"{args.recording}: not a klptrace recording (no 'scenarios' list)",
                             "write one with `klptrace run --record FILE`")
    kernel = doc.get("kernel", "?")
    lost = doc.get("lost_events", 0)
    if (not isinstance(kernel, str) or isinstance(lost, bool) or not isinstance(lost, int)
            or lost < 0):
        raise RecordingError(f"{args.recording}: 'kernel' must be a string, 'lost_events' "
                             "a non-negative integer")
    probes = doc.get("probes", [])
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        raise RecordingError(f"{args.recording}: 'probes' must be a list of objects")
    known = {s.id: s for s in scenario.load_dir(args.scenarios or scenario.BUILTIN_DIR)}
    out = []
    for i, sd in enumerate(doc["scenarios"]):
        where = f"{args.recording}: scenarios[{i}]"
        if not isinstance(sd, dict) or not isinstance(sd.get("id"), str):
            raise RecordingError(f"{where}: needs an 'id'")
        if sd["id"] not in known:
            raise RecordingError(f"{where}: unknown scenario id {sd['id']!r}",
                                 "pass --scenarios DIR for a user's scenarios")
        if sd.get("status") == checker.SKIP:
            s = known[sd["id"]]
            out.append(_skipped(s, str(sd.get("explanation", ""))))
            continue
        rec = Recording.from_json({"events": sd.get("events"), "lost_events":
                                   sd.get("lost_events", 0), "probes": probes}, where)
        v = checker.check(known[sd["id"]].expect, rec)
        oops = sd.get("oops", [])
        if not isinstance(oops, list) or not all(isinstance(x, str) for x in oops):
            raise RecordingError(f"{where}: 'oops' must be a list of strings")
        if oops:  # what the kernel log said, not in the events: it stays an error
            said = "the kernel oopsed: " + "; ".join(kmsg.Oops(oops, True).summary)
            v.status, v.problems = checker.ERROR, [said, *v.problems]
            v.explanation = "; ".join(x for x in (said, v.explanation) if x)
        dur = sd.get("duration_s", 0.0)
        if isinstance(dur, bool) or not isinstance(dur, (int, float)):
            raise RecordingError(f"{where}: 'duration_s' must be a number")
        out.append({"id": sd["id"], "status": v.status, "duration_s": float(dur),
                    "lost_events": rec.lost, "events": [e.to_json() for e in rec.events],
                    "expected": v.expected, "recorded": v.recorded,
                    "explanation": v.explanation, "diff": v.diff, "problems": v.problems,
                    "notes": [], **({"oops": oops} if oops else {})})
    new = results.run_document(kernel, out, lost, probes)
    return _emit(new, args)


def trace(args: Any) -> int:
    """`klptrace trace`: probes on, COMMAND (or until Ctrl-C), the livepatch story out."""
    import subprocess
    import time

    from klptrace import probes
    from klptrace import trace as tr
    from klptrace.recorder import Recorder
    from klptrace.transcript import parse_expectation, render

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    expected = None
    if args.expect:
        expected = parse_expectation(files.read_text(
            args.expect, hint="--expect reads a transcript you wrote (a text file)"))
    kos = [tr.resolve_module(m) for m in args.module]
    probes.check_kernel()
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)} \
        if command else {}
    status = 0
    watch = kmsg.OopsWatch()
    oops: kmsg.Oops | None = None
    try:
        with kmsg.devkmsg_unlimited(), Recorder(kos) as rec:
            klog = kmsg.KernelLog()
            _say(f"Tracing livepatch events{' of ' + ', '.join(args.module) if kos else ''}"
                 + ("... Ctrl-C to end." if not command else f"; running {' '.join(command)}"))
            start = rec.now()
            if command:
                try:
                    proc = subprocess.Popen(command)
                except OSError as e:
                    raise UsageError(f"cannot run {command[0]}: {e.strerror}") from None
                while proc.poll() is None and oops is None:
                    rec.poll(100)
                    oops = watch.check()
                if oops is not None and proc.poll() is None:
                    # a task of it may sleep in the wedged livepatch core for good
                    proc.kill()
                    _say(f"klptrace: the kernel oopsed; {command[0]} (pid {proc.pid}) is "
                         "left behind, it may never return from the kernel")
                status = proc.returncode if proc.returncode is not None else 1
            else:
                try:
                    while oops is None:
                        rec.poll(200)
                        oops = watch.check()
                except KeyboardInterrupt:
                    pass
            time.sleep(0.05)
            recording = rec.recording(start)
            user = [msg for fac, msg in klog.records() if fac != 0]
            klog.close()
            oops = oops or watch.check()
            if oops is not None:
                rec.wedged = "the kernel oopsed"
    finally:
        watch.close()
        for s, h in old.items():
            signal.signal(s, h)
    merged = tr.merge_log(recording.events, user)
    recording.events = merged.events
    lines = render(recording.events)
    problems = checker.integrity(recording)
    if oops is not None:
        problems.append("the kernel oopsed: " + "; ".join(oops.summary))
    for p in problems + merged.notes:
        _say(f"klptrace: {p}")
    if expected is not None:
        v = checker.check(expected, recording)
        if oops is not None:
            v.status, v.problems = checker.ERROR, [*v.problems, problems[-1]]
            v.explanation = "; ".join(x for x in (problems[-1], v.explanation) if x)
        doc = results.run_document(os.uname().release, [{
            "id": "trace", "status": v.status, "duration_s": 0.0, "lost_events": recording.lost,
            "events": [e.to_json() for e in recording.events], "expected": v.expected,
            "recorded": v.recorded, "explanation": v.explanation, "diff": v.diff,
            "problems": v.problems, "notes": merged.notes,
            **({"oops": oops.lines} if oops else {})}], recording.lost, recording.probes)
        fmt = args.format if args.format in ("json", "ktap", "junit") else "text"
        code = _emit(doc, argparse_ns(format=fmt, output=args.output, record=None))
        return code or (1 if status else 0)
    if args.format == "json":
        text = json.dumps({
            "kernel": os.uname().release, "command": command, "status": status,
            "lost_events": recording.lost, "probes": recording.probes,
            "events": [e.to_json() for e in recording.events],
            "callbacks": tr.callbacks_json(recording.events), "transcript": lines,
            "notes": merged.notes, "problems": problems,
            **({"oops": oops.lines} if oops else {})}, indent=1) + "\n"
    else:
        text = "".join(f"{line}\n" for line in lines)
    if args.output:
        files.write_text(args.output, text)
    else:
        files.write_stdout(text)
    if problems:
        return status or 1
    return status


def argparse_ns(**kw: Any) -> Any:
    import argparse

    return argparse.Namespace(**kw)
