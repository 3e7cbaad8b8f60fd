"""`klptrace trace`: probes on, COMMAND (or until Ctrl-C), the livepatch story out.

The pure part (the kernel log's `%` lines as steps, resolving a module name)
is klptrace/trace.py; this module runs the command and writes the story.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

from klptrace import checker, files
from klptrace.commands import Output, emit, line, say, signals_unwind
from klptrace.errors import UsageError, signals_checked
from klptrace.kernel import kmsg
from klptrace.oops import Oops
from klptrace.record.recorder import Recorder
from klptrace.report.markup import terminal
from klptrace.results import RunDocument, ScenarioResult, TraceDocument


@dataclasses.dataclass
class TraceOptions:
    module: list[str] = dataclasses.field(default_factory=list)  # .ko paths or names
    format: str = "transcript"
    output: str | None = None
    expect: str | None = None  # a transcript the recording must match
    command: list[str] = dataclasses.field(default_factory=list)


def run(opts: TraceOptions) -> int:
    from klptrace import trace as tr
    from klptrace.record import probes
    from klptrace.transcript import parse_expectation, render

    command = opts.command[1:] if opts.command[:1] == ["--"] else list(opts.command)
    expected = None
    if opts.expect:
        expected = parse_expectation(files.read_text(
            opts.expect, hint="--expect reads a transcript you wrote (a text file)"))
    kos = [tr.resolve_module(m) for m in opts.module]
    probes.check_kernel()
    status = 0
    oops: Oops | None = None
    watch = kmsg.OopsWatch()
    try:
        # a signal unwinds at the recorder's polls, never between a probe written to the
        # kernel and klptrace's record of it (errors.signals_checked); without COMMAND,
        # Ctrl-C ends the trace, which is then told as usual
        with signals_unwind(), signals_checked(), kmsg.devkmsg_unlimited(), \
                Recorder(kos) as rec:
            klog = kmsg.KernelLog()
            line(f"Tracing livepatch events{' of ' + ', '.join(opts.module) if kos else ''}"
                 + ("... Ctrl-C to end." if not command else f"; running {' '.join(command)}"))
            start = rec.now()
            if command:
                status, oops = _run_command(command, rec, watch)
            else:
                try:
                    while oops is None:
                        rec.poll(200)
                        oops = watch.check()
                except KeyboardInterrupt:
                    pass
            recording = rec.recording(start)
            user = [msg for fac, msg in klog.records() if fac != 0]
            klog.close()
            oops = oops or watch.check()
            if oops is not None:
                rec.wedge.oopsed()
    finally:
        watch.close()
    merged = tr.merge_log(recording.events, user)
    recording.events = merged.events
    oopsed = ""
    if oops is not None:
        oopsed = "the kernel oopsed: " + "; ".join(oops.summary)
    for p in [*checker.integrity(recording), *([oopsed] if oopsed else []), *merged.notes]:
        say(p)
    if expected is not None:
        v = checker.judge(expected, recording, step_error=oopsed,
                          oops=oops.lines if oops else ())
        doc = RunDocument(os.uname().release, [ScenarioResult(
            "trace", v, recording, notes=merged.notes, step_error=oopsed,
            oops=oops.lines if oops else [])], recording.lost, recording.probes)
        fmt = opts.format if opts.format in ("json", "ktap", "junit") else "text"
        code = emit(doc, Output(format=fmt, output=opts.output))
        return code or (1 if status else 0)
    shadows = tr.shadows(recording.events)
    for p in shadows.problems:
        say(p)
    # a leak is told as the line an --expect file states it with
    lines = render(recording.events) + shadows.lines
    problems = checker.integrity(recording) + ([oopsed] if oopsed else []) + shadows.problems
    if opts.format == "json":
        answer = TraceDocument(os.uname().release, command, status, recording, lines,
                               merged.notes, problems, oops.lines if oops else None,
                               list(shadows.ledger.leaks), list(shadows.ledger.problems))
        text = json.dumps(answer.to_json(), indent=1, allow_nan=False) + "\n"
    else:
        text = terminal("".join(f"{x}\n" for x in lines))  # comms are the tasks' own
    if opts.output:
        files.write_text(opts.output, text)
    else:
        files.write_stdout(text)
    return (status or 1) if problems else status


def _run_command(command: list[str], rec: Recorder, watch: kmsg.OopsWatch
                 ) -> tuple[int, Oops | None]:
    """COMMAND's exit status while the recorder records; an oops ends the wait at once."""
    try:
        proc = subprocess.Popen(command)
    except OSError as e:
        raise UsageError(f"cannot run {command[0]}: {e.strerror}") from None
    oops = None
    while proc.poll() is None and oops is None:
        rec.poll(100)
        oops = watch.check()
    if oops is not None and proc.poll() is None:
        # a task of it may sleep in the wedged livepatch core for good
        proc.kill()
        say(f"the kernel oopsed; {command[0]} (pid {proc.pid}) is left behind, it may never "
            "return from the kernel")
    return (proc.returncode if proc.returncode is not None else 1), oops
