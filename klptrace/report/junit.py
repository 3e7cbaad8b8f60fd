"""junit: one testsuite, one testcase per scenario."""

from xml.sax.saxutils import escape, quoteattr


def render(run: dict) -> str:  # type: ignore[type-arg]
    scs = run["scenarios"]
    t = run["totals"]
    total = sum(s["duration_s"] for s in scs)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name="klptrace" tests="{len(scs)}" failures="{t["fail"]}" '
           f'errors="{t["error"]}" skipped="{t["skip"]}" time="{total:.3f}">',
           f'  <properties><property name="kernel" value={quoteattr(run["kernel"])}/>'
           f'<property name="lost_events" value="{run["lost_events"]}"/></properties>']
    for s in scs:
        out.append(f'  <testcase classname="klptrace" name={quoteattr(s["id"])} '
                   f'time="{s["duration_s"]:.3f}">')
        body = escape("\n".join([*s.get("problems", []), *s.get("diff", [])]))
        msg = quoteattr(s.get("explanation", ""))
        if s["status"] == "fail":
            out.append(f"    <failure message={msg}>{body}</failure>")
        elif s["status"] == "error":
            out.append(f"    <error message={msg}>{body}</error>")
        elif s["status"] == "skip":
            out.append(f"    <skipped message={msg}/>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"
