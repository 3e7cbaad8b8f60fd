"""html: one self-contained page (inline CSS and SVG, no script, nothing fetched).

The result table (a scenario x kernel table for a matrix); per scenario its
timeline (report/timeline.py lays it out, report/svg.py draws it), the
expected and recorded transcripts side by side with the first divergence
marked, and for a failure its problems, diff and oops; a stall's report.
A watched transition (`klptrace stall --watch`) is a page of its own (watch()).
Everything that comes from a recording is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from klptrace.events import Event, EventKind
from klptrace.ledger import ShadowLeak
from klptrace.ledger import brief_lines as leak_lines
from klptrace.report import svg
from klptrace.report import timeline as tl
from klptrace.results import Matrix, Probe, RunDocument, ScenarioResult, StallWatch, Status
from klptrace.stall import next_signal_line, timeline_line
from klptrace.stall_report import SignalRound, StallReport, StallStep
from klptrace.transcript import render as transcript
from klptrace.transcript import render_pairs

STATUS: dict[str, tuple[str, str]] = {  # word, sign
    Status.PASS: ("PASS", "✓"), Status.FAIL: ("FAIL", "✗"), Status.ERROR: ("ERROR", "!"),
    Status.SKIP: ("SKIP", "–"),
}

_CSS = """
:root { --ink:#1b1f24; --muted:#5b6470; --rule:#d8dde3; --bg:#ffffff; --soft:#f5f7f9;
  --pass:#007a5a; --fail:#a84300; --error:#8a3f6e; --skip:#5b6470; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 20px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0; display: flex; gap: 10px; align-items: baseline; }
h3 { font-size: 14px; margin: 18px 0 6px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
code, pre, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
a { color: #005a8c; }
.meta { color: var(--muted); margin: 0 0 14px; }
.meta b { color: var(--ink); font-weight: 600; }
.totals { display: flex; gap: 8px; margin: 10px 0 18px; flex-wrap: wrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 700;
  font-size: 12px; letter-spacing: .03em; border: 1.5px solid currentColor; white-space: nowrap; }
.badge.pass { color: var(--pass); background: #e6f4ef; }
.badge.fail { color: var(--fail); background: #fbeee6; }
.badge.error { color: var(--error); background: #f6ebf2; }
.badge.skip { color: var(--skip); background: #eef0f2; }
.badge.zero { opacity: .45; }
table { border-collapse: collapse; }
table.results { width: 100%; margin-bottom: 8px; }
table.results th, table.results td { text-align: left; padding: 5px 10px;
  border-bottom: 1px solid var(--rule); vertical-align: top; }
table.results th { font-size: 12px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; border-bottom: 2px solid var(--rule); }
table.results .num { text-align: right; font-variant-numeric: tabular-nums; }
table.results tr:nth-child(even) td { background: var(--soft); }
td.why { color: var(--muted); max-width: 560px; }
section.scenario { border: 1px solid var(--rule); border-radius: 8px; margin: 22px 0;
  padding: 14px 16px 12px; }
section.scenario.fail, section.scenario.error { border-left: 5px solid var(--fail); }
section.scenario.pass { border-left: 5px solid var(--pass); }
.sub { color: var(--muted); font-weight: 400; font-size: 13px; }
.explain { background: #fbeee6; border-left: 4px solid #D55E00; padding: 8px 12px;
  margin: 10px 0; }
.timeline { overflow-x: auto; margin: 10px 0 4px; }
.timeline svg { display: block; width: 100%; height: auto; min-width: 860px; }
.legend { margin: 4px 0 14px; } .legend svg { width: 100%; height: auto; max-width: 1120px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--muted); font-weight: 600; }
table.transcript { width: 100%; table-layout: fixed; margin-top: 6px; }
table.transcript td, table.transcript th { padding: 1px 6px; vertical-align: top;
  font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px;
  overflow-wrap: anywhere; }
table.transcript th { text-align: left; color: var(--muted); font-family: inherit;
  border-bottom: 1px solid var(--rule); }
table.transcript td.n { width: 4.5em; color: var(--muted); text-align: right; }
table.transcript col.n { width: 4.5em; } table.transcript col.t { width: 6.5em; }
table.transcript td.t { color: var(--muted); text-align: right; }
table.transcript tr.diverge td { background: #fbe3d3; font-weight: 700; }
table.transcript tr.diverge td.n { color: #a84300; }
table.transcript tr.after td { color: #6d5a50; }
pre { background: var(--soft); border: 1px solid var(--rule); padding: 8px 10px;
  overflow-x: auto; margin: 6px 0; }
pre.diff .add { background: #e1f3ec; } pre.diff .del { background: #fbe3d3; }
pre.diff .hunk { color: var(--muted); }
pre.oops { background: #fff4ef; border-color: #D55E00; }
ul.problems li { color: #a84300; }
table.stall td, table.stall th { padding: 3px 10px; border-bottom: 1px solid var(--rule);
  text-align: left; vertical-align: top; }
table.matrix td, table.matrix th { padding: 5px 12px; border-bottom: 1px solid var(--rule);
  text-align: left; }
table.matrix th.k { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
@media print { section.scenario { break-inside: avoid; } }
"""

_e = svg.esc
# the timelines' styles and patterns, in the page's head and once before them
_SVG_CSS, _DEFS = svg.CSS, svg.DEFS
_KLP_KINDS = (EventKind.STATE, EventKind.STATE_DECLARED, EventKind.SHADOW)


def _anchor(prefix: str, sid: str) -> str:
    """An element id for a scenario: only [A-Za-z0-9_-]."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "-", sid)


def _badge(status: str) -> str:
    word, sign = STATUS.get(status, (status.upper(), "?"))
    return f'<span class="badge {_e(status)}">{sign} {_e(word)}</span>'


# ---- HTML ----

def _flags(divergence: int | None, events: Sequence[Event]) -> list[tuple[int, str]]:
    """The verdict's first divergence (1-based) on the timeline: at the event of that
    recorded line (or the last event, when the recording stopped short of it)."""
    if not divergence or not events:
        return []
    pairs = render_pairs(events)
    ts = pairs[divergence - 1][1].ts_ns if divergence <= len(pairs) else events[-1].ts_ns
    return [(ts, f"first divergence (line {divergence})")]


def _transcripts(expected: Sequence[str], recorded: Sequence[str], events: Sequence[Event],
                 div: int | None, opened: bool) -> str:
    pairs = render_pairs(events)
    t0 = events[0].ts_ns if events else 0
    times = ([f"+{(ev.ts_ns - t0) / 1e9:.3f} s" for _line, ev in pairs]
             if [line for line, _ev in pairs] == list(recorded) else [""] * len(recorded))
    rows = []
    for i in range(max(len(expected), len(recorded))):
        n = i + 1
        cls = ' class="diverge"' if n == div else (' class="after"' if div and n > div else "")
        mark = "▶ " if n == div else ""
        exp = expected[i] if i < len(expected) else ""
        rec = recorded[i] if i < len(recorded) else ""
        t = times[i] if i < len(times) else ""
        rows.append(f'<tr{cls}><td class="n">{mark}{n}</td><td>{_e(exp)}</td>'
                    f'<td class="t">{_e(t)}</td><td>{_e(rec)}</td></tr>')
    if div:
        head = (f"Transcripts: the first divergence is line {div} (marked ▶); "
                f"{len(expected)} lines expected, {len(recorded)} recorded")
    elif list(expected) == list(recorded):
        head = f"Transcripts: recorded as expected, {len(recorded)} lines"
    else:
        head = f"Transcripts: {len(expected)} lines expected, {len(recorded)} recorded"
    return (f"<details class=\"transcripts\"{' open' if opened else ''}><summary>{_e(head)}"
            '</summary><table class="transcript"><colgroup><col class="n"><col>'
            '<col class="t"><col></colgroup><thead><tr><th>#</th><th>expected</th><th>at</th>'
            f"<th>recorded</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>")


def _diff(lines: Sequence[str]) -> str:
    out = []
    for s in lines:
        cls = ("hunk" if s.startswith(("@@", "--- ", "+++ ")) else "add" if s.startswith("+")
               else "del" if s.startswith("-") else "")
        out.append(f'<span class="{cls}">{_e(s)}</span>' if cls else _e(s))
    return '<pre class="diff">' + "\n".join(out) + "</pre>"


def _stall(patch: str, direction: str, rep: StallReport | None,
           story: Sequence[StallStep]) -> str:
    """A stall report (rep: None when no report was taken: a watch that never saw the
    transition in progress), with the transition's story."""
    head = (f"{patch}: {direction} transition"
            + (f", in transition for {rep.in_transition_s:.1f} s"
               if rep and rep.in_transition_s is not None else "")
            + (f", {rep.tries} {'try' if rep.tries == 1 else 'tries'}"
               if rep and rep.tries is not None else "")
            + (", FORCED" if rep and rep.forced else ""))
    out = [f"<h3>Stall report</h3><p><b>{_e(head)}</b></p>"]
    out += [f"<p>{_e(s)}</p>" for s in rep.signals] if rep else []
    if rep and rep.sched is not None:  # a report saved before klptrace told it has none
        out.append(f"<p>{_e(next_signal_line(rep))}</p>")
    tasks = rep.tasks if rep else []
    if tasks:
        # how each sleeps and its next step: columns only for a report that has them,
        # so one saved before them is drawn as it was
        advised = any(t.sleep is not None or t.next_step for t in tasks)
        rows = []
        for t in tasks:
            held = "" if t.blocking_s is None else f"{t.blocking_s:.1f} s"
            more = (f"<td>{_e(t.sleep or '?')}</td><td>{_e(t.next_step)}</td>"
                    if advised else "")
            rows.append(
                f"<tr><td class=\"mono\">{_e(t.comm)}:{_e(t.tid)}</td>"
                f"<td>{'kernel thread' if t.kthread else 'task'}</td>"
                f"<td>{_e(t.reason)}</td><td class=\"mono\">{_e(t.function)}</td>"
                f"<td>{_e(held)}</td><td>{_e(t.source)}</td>{more}</tr>")
        head = "<th>sleep</th><th>next step</th>" if advised else ""
        out.append('<table class="stall"><thead><tr><th>task</th><th>kind</th><th>reason</th>'
                   f"<th>function</th><th>blocking</th><th>from</th>{head}</tr></thead>"
                   f"<tbody>{''.join(rows)}</tbody></table>")
        out += [f"<details><summary>stack of {_e(t.comm)}:{_e(t.tid)}</summary><pre>"
                + _e("\n".join(t.stack)) + "</pre></details>" for t in tasks if t.stack]
    if story:
        lines = [timeline_line(step, tasks=True) for step in story]
        out.append("<details><summary>the transition's story</summary><pre>"
                   + _e("\n".join(lines)) + "</pre></details>")
    if rep and rep.next_steps:
        out.append("<details><summary>next steps</summary><ul>"
                   + "".join(f"<li>{_e(s)}</li>" for s in rep.next_steps) + "</ul></details>")
    return "".join(out)


def _section_head(anchor: str, name: str, status: Status, seconds: float, events: int,
                  start_time: str, explanation: str, problems: Sequence[str],
                  notes: Sequence[str]) -> list[str]:
    """A section's title line and what it says before its timeline."""
    sub = [f"{seconds:.2f} s", f"{events} events", start_time]
    out = [f'<section class="scenario {_e(status)}" id="{_e(anchor)}">',
           f"<h2>{_badge(status)} <span class=\"mono\">{_e(name)}</span>"
           f"<span class=\"sub\">{_e(' · '.join(s for s in sub if s))}</span></h2>"]
    if explanation:
        out.append(f'<div class="explain">{_e(explanation)}</div>')
    if problems:
        out.append('<ul class="problems">'
                   + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    if notes:
        out.append("<ul>" + "".join(f"<li>note: {_e(n)}</li>" for n in notes) + "</ul>")
    return out


def _timeline(anchor: str, name: str, events: Sequence[Event], stall: StallReport | None,
              flags: Sequence[tuple[int, str]] = (),
              leaks: Sequence[ShadowLeak] | None = None) -> str:
    if not events:
        return "<p class=\"sub\">nothing was recorded</p>"
    lay = tl.layout(events, stall, flags=flags, leaks=leaks)
    return (f'<div class="timeline" id="{_e(anchor)}-timeline">'
            + svg.svg(lay, f"timeline of {name}") + "</div>")


def scenario(sc: ScenarioResult, prefix: str = "") -> str:
    """One scenario's section."""
    v, events, anchor = sc.verdict, sc.recording.events, _anchor(prefix, sc.id)
    out = _section_head(anchor, sc.id, sc.status, sc.seconds, len(events), sc.start_time,
                        v.explanation, v.problems, sc.notes)
    if v.shadow_leaks:  # a leak the scenario expects passes: its addresses are still told
        out.append('<ul class="problems">'
                   + "".join(f"<li>{_e(x)}</li>" for x in leak_lines(v.shadow_leaks)) + "</ul>")
    out.append(_timeline(anchor, sc.id, events, sc.stall, _flags(v.divergence, events),
                         v.shadow_leaks))
    if sc.stall:
        out.append(_stall(sc.stall.patch, sc.stall.direction, sc.stall, sc.stall.timeline))
    if v.expected or v.recorded:
        out.append(_transcripts(v.expected, v.recorded, events, v.divergence,
                                sc.status in (Status.FAIL, Status.ERROR)))
    if v.diff:
        out.append("<h3>Diff</h3>" + _diff(v.diff))
    if sc.oops:
        out.append("<h3>Oops</h3><pre class=\"oops\">" + _e("\n".join(sc.oops)) + "</pre>")
    if sc.dmesg:
        out.append("<details><summary>kernel log (livepatch lines)</summary><pre>"
                   + _e("\n".join(sc.dmesg)) + "</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _totals(t: Mapping[Status, int]) -> str:
    parts = []
    for k in (Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP):
        n = t.get(k, 0)
        word, sign = STATUS[k]
        zero = " zero" if not n else ""
        parts.append(f'<span class="badge {k}{zero}">{sign} {n} {_e(word.lower())}</span>')
    return '<div class="totals">' + "".join(parts) + "</div>"


def _why(status: Status, explanation: str, problems: Sequence[str],
         notes: Sequence[str]) -> str:
    if status == Status.PASS:
        return "as expected" + (f"; note: {notes[0]}" if notes else "")
    return explanation or "; ".join(problems)


def _row(i: int, anchor: str, name: str, status: Status, events: int, seconds: float,
         why: str) -> str:
    """One row of the results table, linked to its section."""
    return (f'<tr><td class="num">{i}</td><td><a class="mono" href="#{_e(anchor)}">'
            f"{_e(name)}</a></td><td>{_badge(status)}</td>"
            f"<td class=\"num\">{events}</td><td class=\"num\">{_e(f'{seconds:.2f}')}</td>"
            f'<td class="why">{_e(why)}</td></tr>')


def _results_table(rows: Sequence[str]) -> str:
    return ('<table class="results"><thead><tr><th class="num">#</th><th>scenario</th>'
            '<th>result</th><th class="num">events</th><th class="num">seconds</th>'
            "<th>what happened</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _meta(kernel: str, lost: int, probes: Sequence[Probe],
          more: Sequence[tuple[str, object]] = (), leftovers: Sequence[str] = ()) -> str:
    """What ran where: the kernel, lost events, the probes (and each that failed), more
    facts (name, value), what was left in the kernel."""
    ok = sum(1 for p in probes if p.ok)
    parts = [f"kernel <b>{_e(kernel)}</b>", f"lost events <b>{_e(lost)}</b>",
             f"probes attached <b>{ok}/{len(probes)}</b>"]
    parts += [f"{_e(k)} <b>{_e(v)}</b>" for k, v in more]
    out = ['<p class="meta">' + " · ".join(parts) + "</p>"]
    failed = [p for p in probes if not p.ok]
    if failed:
        out.append('<ul class="problems">' + "".join(
            f"<li>probe {_e(p.name)} did not attach: {_e(p.reason)}</li>"
            for p in failed) + "</ul>")
    if leftovers:
        out.append('<ul class="problems">' + "".join(
            f"<li>left in the kernel: {_e(x)}</li>" for x in leftovers) + "</ul>")
    return "".join(out)


def _run_body(run: RunDocument, prefix: str) -> str:
    more = [(k.removesuffix("_s"), f"{v} s") for k, v in (run.timing or {}).items()]
    more += list((run.kernel_info or {}).items())
    rows = [_row(i, _anchor(prefix, sc.id), sc.id, sc.status, len(sc.recording.events),
                 sc.seconds, _why(sc.status, sc.verdict.explanation, sc.verdict.problems,
                                  sc.notes))
            for i, sc in enumerate(run.scenarios, 1)]
    out = [_meta(run.kernel, run.lost_events, run.probes, more, run.leftovers or ()),
           _totals(run.totals), _results_table(rows),
           f'<div class="legend">{svg.legend(_klp(run))}</div>']
    out += [scenario(sc, prefix) for sc in run.scenarios]
    return "\n".join(out)


def _klp(run: RunDocument) -> bool:
    """Whether a run recorded states or shadow variables (its legend then says their
    marks)."""
    return any(e.kind in _KLP_KINDS for sc in run.scenarios for e in sc.recording.events)


def _matrix(m: Matrix) -> str:
    ids = dict.fromkeys(sc.id for r in m.runs for sc in r.scenarios)
    head = "".join(f'<th class="k">{_e(r.kernel)}</th>' for r in m.runs)
    rows = []
    for sid in ids:
        cells = []
        for k, r in enumerate(m.runs):
            sc = next((s for s in r.scenarios if s.id == sid), None)
            cells.append("<td>–</td>" if sc is None else
                         f'<td><a href="#{_e(_anchor(f"k{k}-", sid))}">'
                         f"{_badge(sc.status)}</a></td>")
        rows.append(f'<tr><td class="mono">{_e(sid)}</td>{"".join(cells)}</tr>')
    out = [_totals(m.totals),
           f'<table class="matrix results"><thead><tr><th>scenario</th>{head}</tr></thead>'
           f"<tbody>{''.join(rows)}</tbody></table>"]
    for k, r in enumerate(m.runs):
        out.append(f'<h1 id="k{k}" style="margin-top:34px">kernel '
                   f'<span class="mono">{_e(r.kernel)}</span></h1>')
        out.append(_run_body(r, f"k{k}-"))
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}{_SVG_CSS}</style></head><body>"
            f"{_DEFS}<main id=\"report\">{body}<footer>Written by klptrace from a recording of the "
            "livepatch core (BPF). Times are from each scenario's first event "
            "(CLOCK_MONOTONIC).</footer></main></body></html>\n")


def render(m: Matrix) -> str:
    """A run, or a matrix of runs, as one HTML page."""
    if m.run is None:
        kernels = ", ".join(r.kernel for r in m.runs)
        title = f"klptrace: {len(m.runs)} kernels"
        body = f"<h1>{_e(title)}</h1><p class=\"meta\">{_e(kernels)}</p>" + _matrix(m)
    else:
        title = f"klptrace on {m.run.kernel}"
        body = f"<h1>{_e(title)}</h1>" + _run_body(m.run, "")
    return _page(title, body)


def _rounds(rounds: Sequence[SignalRound]) -> str:
    """The signal rounds a watch saw, and the tasks that switched after each."""
    rows = [f"<tr><td>{r.number}</td><td>{r.t_s:.3f} s</td><td>end of try {r.try_number}</td>"
            f"<td class=\"mono\">{_e(', '.join(r.switched) or 'none')}</td></tr>"
            for r in rounds]
    return ('<h3>Signal rounds</h3><table class="stall"><thead><tr><th>round</th><th>at</th>'
            "<th>sent</th><th>switched after it</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


#: what a watch's page says of it: nothing was expected of a watch
_WATCH_NOTE = "a watch of a transition: nothing was expected, this is what the kernel did"


def watch(w: StallWatch) -> str:
    """A watched transition (`klptrace stall --watch`) as one HTML page: laid out as a run
    of one section, the watch, with its timeline, its stall report and what was recorded."""
    name, rec = f"stall {w.patch}", w.recording
    anchor = _anchor("", name)
    # as the command's exit status says
    status = (Status.ERROR if w.problems else Status.PASS if w.completed else Status.FAIL)
    why = "; ".join([*(["the recording cannot be trusted: " + "; ".join(w.problems)]
                       if w.problems else []),
                     *([] if w.completed
                       else [f"{w.patch} was still in transition when the watch ended"])])
    recorded = transcript(rec.events)
    seconds = round(w.watched_s, 3)
    section = _section_head(anchor, name, status, seconds, len(rec.events), "", why, (),
                            [_WATCH_NOTE])
    section.append(_timeline(anchor, name, rec.events, w.report))
    section.append(_stall(w.patch, w.direction or "?", w.report, w.timeline))
    if w.rounds:
        section.append(_rounds(w.rounds))
    if recorded:
        section.append(_transcripts([], recorded, rec.events, None, not w.completed))
    section.append("</section>")
    title = f"klptrace on {w.kernel}"
    body = "\n".join([
        f"<h1>{_e(title)}</h1>" + _meta(w.kernel, rec.lost, rec.probes),
        _totals({status: 1}),
        _results_table([_row(1, anchor, name, status, len(rec.events), seconds,
                             _why(status, why, (), [_WATCH_NOTE]))]),
        f'<div class="legend">{svg.legend(any(e.kind in _KLP_KINDS for e in rec.events))}'
        "</div>", "\n".join(section)])
    return _page(title, body)
