"""junit: one testsuite, one testcase per scenario; a matrix is a testsuite per kernel.

A stalling scenario's stall report (stall.brief_lines) goes in its failure's body when
it failed, else in its testcase's <system-out>; like every text here it passes through
markup.text, so a task's comm cannot end an element or break the file. A scenario's
shadow leaks (ledger.brief_lines) go there too, after its problems: a leak it does not
expect made it an error; one it expects passes and is listed in <system-out>.
"""

from klptrace.ledger import brief_lines as leak_lines
from klptrace.report.markup import attr, text
from klptrace.results import Matrix, RunDocument, Status
from klptrace.stall import brief_lines

_TAG = {Status.FAIL: "failure", Status.ERROR: "error"}


def _suite(run: RunDocument, name: str, indent: str) -> list[str]:
    scs = run.scenarios
    t = run.totals
    total = sum(s.seconds for s in scs)
    out = [f'{indent}<testsuite name={attr(name)} tests="{len(scs)}" '
           f'failures="{t[Status.FAIL]}" errors="{t[Status.ERROR]}" '
           f'skipped="{t[Status.SKIP]}" time="{total:.3f}">',
           f'{indent}  <properties><property name="kernel" value={attr(run.kernel)}/>'
           f'<property name="lost_events" value="{run.lost_events}"/></properties>']
    for s in scs:
        v = s.verdict
        out.append(f'{indent}  <testcase classname="klptrace" name={attr(s.id)} '
                   f'time="{s.seconds:.3f}">')
        leaks = leak_lines(v.shadow_leaks)
        stall = brief_lines(s.stall, v.recorded)
        msg = attr(v.explanation)
        if s.status in _TAG:
            tag = _TAG[s.status]
            body = text("\n".join([*v.problems, *leaks, *v.diff, *stall]))
            out.append(f"{indent}    <{tag} message={msg}>{body}</{tag}>")
        else:
            if s.status == Status.SKIP:
                out.append(f"{indent}    <skipped message={msg}/>")
            if leaks or stall:
                said = text("\n".join([*leaks, *stall]))
                out.append(f"{indent}    <system-out>{said}</system-out>")
        out.append(f"{indent}  </testcase>")
    out.append(f"{indent}</testsuite>")
    return out


def render(m: Matrix) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    if m.run is not None:
        out += _suite(m.run, "klptrace", "")
    else:
        out.append('<testsuites name="klptrace">')
        for r in m.runs:
            out += _suite(r, f"klptrace on {r.kernel}", "  ")
        out.append("</testsuites>")
    return "\n".join(out) + "\n"
