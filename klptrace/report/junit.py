"""junit: one testsuite, one testcase per scenario; a matrix is a testsuite per kernel."""

from typing import Any

from klptrace.report.markup import attr, text
from klptrace.results import Status, is_matrix

_TAG = {Status.FAIL: "failure", Status.ERROR: "error"}


def _suite(run: dict[str, Any], name: str, indent: str) -> list[str]:
    scs = run["scenarios"]
    t = run["totals"]
    total = sum(s["duration_s"] for s in scs)
    out = [f'{indent}<testsuite name={attr(name)} tests="{len(scs)}" '
           f'failures="{t["fail"]}" errors="{t["error"]}" skipped="{t["skip"]}" '
           f'time="{total:.3f}">',
           f'{indent}  <properties><property name="kernel" value={attr(run["kernel"])}/>'
           f'<property name="lost_events" value="{run["lost_events"]}"/></properties>']
    for s in scs:
        out.append(f'{indent}  <testcase classname="klptrace" name={attr(s["id"])} '
                   f'time="{s["duration_s"]:.3f}">')
        body = text("\n".join([*s.get("problems", []), *s.get("diff", [])]))
        msg = attr(s.get("explanation", ""))
        if s["status"] in _TAG:
            tag = _TAG[Status(s["status"])]
            out.append(f"{indent}    <{tag} message={msg}>{body}</{tag}>")
        elif s["status"] == Status.SKIP:
            out.append(f"{indent}    <skipped message={msg}/>")
        out.append(f"{indent}  </testcase>")
    out.append(f"{indent}</testsuite>")
    return out


def render(run: dict[str, Any]) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    if is_matrix(run):
        out.append('<testsuites name="klptrace">')
        for r in run["runs"]:
            out += _suite(r, f"klptrace on {r['kernel']}", "  ")
        out.append("</testsuites>")
    else:
        out += _suite(run, "klptrace", "")
    return "\n".join(out) + "\n"
