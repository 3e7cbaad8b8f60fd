"""html: one self-contained page (inline CSS and SVG, no script, nothing fetched).

The result table (a scenario x kernel table for a matrix); per scenario its
timeline (report/timeline.py lays it out, report/svg.py draws it), the
expected and recorded transcripts side by side with the first divergence
marked, and for a failure its problems, diff and oops; a stall's report.
Everything that comes from a recording is escaped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from klptrace.events import Event
from klptrace.report import svg
from klptrace.report import timeline as tl
from klptrace.results import Matrix, RunDocument, Status
from klptrace.stall import timeline_line
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


def _anchor(prefix: str, sid: str) -> str:
    """An element id for a scenario: only [A-Za-z0-9_-]."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "-", sid)


def _badge(status: str) -> str:
    word, sign = STATUS.get(status, (status.upper(), "?"))
    return f'<span class="badge {_e(status)}">{sign} {_e(word)}</span>'


# ---- HTML ----

def _divergence(sd: Mapping[str, Any]) -> int | None:
    """The verdict's first divergence (results.Verdict.divergence, which render() puts in
    each scenario's section), 1-based."""
    div = sd.get("divergence")
    return div if isinstance(div, int) else None


def _flags(sd: Mapping[str, Any], events: Sequence[Event]) -> list[tuple[int, str]]:
    """The first divergence on the timeline: at the event of that recorded line (or the
    last event, when the recording stopped short of it)."""
    div = _divergence(sd)
    if not div or not events:
        return []
    pairs = render_pairs(events)
    ts = pairs[div - 1][1].ts_ns if div <= len(pairs) else events[-1].ts_ns
    return [(ts, f"first divergence (line {div})")]


def _events(sd: Mapping[str, Any]) -> list[Event]:
    out = []
    for d in sd.get("events") or []:
        try:
            out.append(Event.from_json(d))
        except (KeyError, TypeError, ValueError):
            continue  # a formatter draws what it can read; `check` says what is wrong
    return out


def _transcripts(sd: Mapping[str, Any], events: Sequence[Event]) -> str:
    expected = [str(x) for x in sd.get("expected") or []]
    recorded = [str(x) for x in sd.get("recorded") or []]
    pairs = render_pairs(events)
    t0 = events[0].ts_ns if events else 0
    times = ([f"+{(ev.ts_ns - t0) / 1e9:.3f} s" for _line, ev in pairs]
             if [line for line, _ev in pairs] == recorded else [""] * len(recorded))
    div = _divergence(sd)
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
    elif expected == recorded:
        head = f"Transcripts: recorded as expected, {len(recorded)} lines"
    else:
        head = f"Transcripts: {len(expected)} lines expected, {len(recorded)} recorded"
    opened = " open" if sd.get("status") in (Status.FAIL, Status.ERROR) else ""
    return (f"<details class=\"transcripts\"{opened}><summary>{_e(head)}</summary>"
            '<table class="transcript"><colgroup><col class="n"><col><col class="t"><col>'
            "</colgroup><thead><tr><th>#</th><th>expected</th><th>at</th><th>recorded</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>")


def _diff(lines: Sequence[str]) -> str:
    out = []
    for line in lines:
        s = str(line)
        cls = ("hunk" if s.startswith(("@@", "--- ", "+++ ")) else "add" if s.startswith("+")
               else "del" if s.startswith("-") else "")
        out.append(f'<span class="{cls}">{_e(s)}</span>' if cls else _e(s))
    return '<pre class="diff">' + "\n".join(out) + "</pre>"


def _stall(st: Mapping[str, Any]) -> str:
    head = (f"{st.get('patch', '?')}: {st.get('direction', '?')} transition"
            + (f", in transition for {st['in_transition_s']:.1f} s"
               if isinstance(st.get("in_transition_s"), (int, float)) else "")
            + (f", {st['tries']} {'try' if st['tries'] == 1 else 'tries'}"
               if isinstance(st.get("tries"), int) else "")
            + (", FORCED" if st.get("forced") else ""))
    out = [f"<h3>Stall report</h3><p><b>{_e(head)}</b></p>"]
    out += [f"<p>{_e(s)}</p>" for s in st.get("signals") or []]
    tasks = [t for t in st.get("tasks") or [] if isinstance(t, Mapping)]
    if tasks:
        rows = []
        for t in tasks:
            held = t.get("blocking_s")
            rows.append(
                f"<tr><td class=\"mono\">{_e(t.get('comm', '?'))}:{_e(t.get('tid', '?'))}</td>"
                f"<td>{'kernel thread' if t.get('kthread') else 'task'}</td>"
                f"<td>{_e(t.get('reason', ''))}</td>"
                f"<td class=\"mono\">{_e(t.get('function', ''))}</td>"
                f"<td>{_e(f'{held:.1f} s' if isinstance(held, (int, float)) else '')}</td>"
                f"<td>{_e(t.get('source', ''))}</td></tr>")
        out.append('<table class="stall"><thead><tr><th>task</th><th>kind</th><th>reason</th>'
                   "<th>function</th><th>blocking</th><th>from</th></tr></thead>"
                   f"<tbody>{''.join(rows)}</tbody></table>")
        for t in tasks:
            if t.get("stack"):
                out.append(f"<details><summary>stack of {_e(t.get('comm', '?'))}:"
                           f"{_e(t.get('tid', '?'))}</summary><pre>"
                           + _e("\n".join(map(str, t["stack"]))) + "</pre></details>")
    story = [i for i in st.get("timeline") or [] if isinstance(i, Mapping)]
    if story:
        lines = [timeline_line(item, tasks=True) for item in story]
        out.append("<details><summary>the transition's story</summary><pre>"
                   + _e("\n".join(lines)) + "</pre></details>")
    steps = st.get("next_steps") or []
    if steps:
        out.append("<details><summary>next steps</summary><ul>"
                   + "".join(f"<li>{_e(s)}</li>" for s in steps) + "</ul></details>")
    return "".join(out)


def scenario(sd: Mapping[str, Any], prefix: str = "") -> str:
    """One scenario's section."""
    sid, status = str(sd.get("id", "?")), str(sd.get("status", "?"))
    events = _events(sd)
    dur = sd.get("duration_s")
    sub = [f"{dur:.2f} s" if isinstance(dur, (int, float)) else "",
           f"{len(events)} events", str(sd.get("start_time", "") or "")]
    out = [f'<section class="scenario {_e(status)}" id="{_e(_anchor(prefix, sid))}">',
           f"<h2>{_badge(status)} <span class=\"mono\">{_e(sid)}</span>"
           f"<span class=\"sub\">{_e(' · '.join(s for s in sub if s))}</span></h2>"]
    if sd.get("explanation"):
        out.append(f'<div class="explain">{_e(sd["explanation"])}</div>')
    if sd.get("problems"):
        out.append('<ul class="problems">'
                   + "".join(f"<li>{_e(p)}</li>" for p in sd["problems"]) + "</ul>")
    if sd.get("notes"):
        out.append("<ul>" + "".join(f"<li>note: {_e(n)}</li>" for n in sd["notes"]) + "</ul>")
    stall = sd.get("stall") if isinstance(sd.get("stall"), Mapping) else None
    if events:
        lay = tl.layout(events, stall, flags=_flags(sd, events))
        out.append(f'<div class="timeline" id="{_e(_anchor(prefix, sid))}-timeline">'
                   + svg.svg(lay, f"timeline of {sid}") + "</div>")
    else:
        out.append("<p class=\"sub\">nothing was recorded</p>")
    if stall:
        out.append(_stall(stall))
    if sd.get("expected") or sd.get("recorded"):
        out.append(_transcripts(sd, events))
    if sd.get("diff"):
        out.append("<h3>Diff</h3>" + _diff(sd["diff"]))
    if sd.get("oops"):
        out.append("<h3>Oops</h3><pre class=\"oops\">"
                   + _e("\n".join(map(str, sd["oops"]))) + "</pre>")
    if sd.get("dmesg"):
        out.append("<details><summary>kernel log (livepatch lines)</summary><pre>"
                   + _e("\n".join(map(str, sd["dmesg"]))) + "</pre></details>")
    out.append("</section>")
    return "\n".join(out)


def _totals(t: Mapping[str, Any]) -> str:
    parts = []
    for k in (Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP):
        n = t.get(k, 0)
        word, sign = STATUS[k]
        zero = " zero" if not n else ""
        parts.append(f'<span class="badge {k}{zero}">{sign} {n} {_e(word.lower())}</span>')
    return '<div class="totals">' + "".join(parts) + "</div>"


def _why(sd: Mapping[str, Any]) -> str:
    if sd.get("status") == Status.PASS:
        notes = sd.get("notes") or []
        return "as expected" + (f"; note: {notes[0]}" if notes else "")
    return str(sd.get("explanation") or "; ".join(map(str, sd.get("problems") or [])))


def _results_table(run: Mapping[str, Any], prefix: str) -> str:
    rows = []
    for i, sd in enumerate(run.get("scenarios") or [], 1):
        sid = str(sd.get("id", "?"))
        dur = sd.get("duration_s")
        rows.append(
            f'<tr><td class="num">{i}</td><td><a class="mono" href="#{_e(_anchor(prefix, sid))}">'
            f"{_e(sid)}</a></td><td>{_badge(str(sd.get('status', '?')))}</td>"
            f"<td class=\"num\">{len(sd.get('events') or [])}</td>"
            f"<td class=\"num\">{_e(f'{dur:.2f}' if isinstance(dur, (int, float)) else '')}</td>"
            f'<td class="why">{_e(_why(sd))}</td></tr>')
    return ('<table class="results"><thead><tr><th class="num">#</th><th>scenario</th>'
            '<th>result</th><th class="num">events</th><th class="num">seconds</th>'
            "<th>what happened</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _run_meta(run: Mapping[str, Any]) -> str:
    probes = [p for p in run.get("probes") or [] if isinstance(p, Mapping)]
    ok = sum(1 for p in probes if p.get("ok"))
    parts = [f"kernel <b>{_e(run.get('kernel', '?'))}</b>",
             f"lost events <b>{_e(run.get('lost_events', '?'))}</b>",
             f"probes attached <b>{ok}/{len(probes)}</b>"]
    timing = run.get("timing")
    if isinstance(timing, Mapping):
        parts += [f"{_e(k.removesuffix('_s'))} <b>{_e(v)} s</b>" for k, v in timing.items()]
    info = run.get("kernel_info")
    if isinstance(info, Mapping):
        parts += [f"{_e(k)} <b>{_e(v)}</b>" for k, v in info.items()]
    out = ['<p class="meta">' + " · ".join(parts) + "</p>"]
    failed = [p for p in probes if not p.get("ok")]
    if failed:
        out.append('<ul class="problems">' + "".join(
            f"<li>probe {_e(p.get('name', '?'))} did not attach: {_e(p.get('reason', ''))}</li>"
            for p in failed) + "</ul>")
    if run.get("leftovers"):
        out.append('<ul class="problems">' + "".join(
            f"<li>left in the kernel: {_e(x)}</li>" for x in run["leftovers"]) + "</ul>")
    return "".join(out)


def _run_body(run: Mapping[str, Any], prefix: str) -> str:
    out = [_run_meta(run), _totals(run.get("totals") or {}), _results_table(run, prefix),
           f'<div class="legend">{svg.legend()}</div>']
    out += [scenario(sd, prefix) for sd in run.get("scenarios") or []]
    return "\n".join(out)


def _matrix(doc: Mapping[str, Any]) -> str:
    runs = [r for r in doc.get("runs") or [] if isinstance(r, Mapping)]
    ids: dict[str, None] = {}
    for r in runs:
        for sd in r.get("scenarios") or []:
            ids.setdefault(str(sd.get("id", "?")), None)
    head = "".join(f'<th class="k">{_e(r.get("kernel", "?"))}</th>' for r in runs)
    rows = []
    for sid in ids:
        cells = []
        for k, r in enumerate(runs):
            sd = next((s for s in r.get("scenarios") or [] if str(s.get("id")) == sid), None)
            cells.append("<td>–</td>" if sd is None else
                         f'<td><a href="#{_e(_anchor(f"k{k}-", sid))}">'
                         f"{_badge(str(sd.get('status', '?')))}</a></td>")
        rows.append(f'<tr><td class="mono">{_e(sid)}</td>{"".join(cells)}</tr>')
    out = [_totals(doc.get("totals") or {}),
           f'<table class="matrix results"><thead><tr><th>scenario</th>{head}</tr></thead>'
           f"<tbody>{''.join(rows)}</tbody></table>"]
    for k, r in enumerate(runs):
        out.append(f'<h1 id="k{k}" style="margin-top:34px">kernel '
                   f'<span class="mono">{_e(r.get("kernel", "?"))}</span></h1>')
        out.append(_run_body(r, f"k{k}-"))
    return "\n".join(out)


def _run(run: RunDocument) -> dict[str, Any]:
    """A run as the sections above read it: its JSON, each scenario with its verdict's
    first divergence."""
    d = run.to_json()
    d["scenarios"] = [{**s.to_json(), "divergence": s.verdict.divergence}
                      for s in run.scenarios]
    return d


def render(m: Matrix) -> str:
    """A run, or a matrix of runs, as one HTML page."""
    if m.run is None:
        kernels = ", ".join(r.kernel for r in m.runs)
        title = f"klptrace: {len(m.runs)} kernels"
        doc = {"runs": [_run(r) for r in m.runs], "totals": m.totals}
        body = f"<h1>{_e(title)}</h1><p class=\"meta\">{_e(kernels)}</p>" + _matrix(doc)
    else:
        title = f"klptrace on {m.run.kernel}"
        body = f"<h1>{_e(title)}</h1>" + _run_body(_run(m.run), "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}{_SVG_CSS}</style></head><body>"
            f"{_DEFS}<main id=\"report\">{body}<footer>Written by klptrace from a recording of the "
            "livepatch core (BPF). Times are from each scenario's first event "
            "(CLOCK_MONOTONIC).</footer></main></body></html>\n")
