"""ktap: KTAP version 1, one test line per scenario, diagnostics after failures."""

_DIRECTIVE = {"skip": " # SKIP"}


def render(run: dict) -> str:  # type: ignore[type-arg]
    scs = run["scenarios"]
    out = ["KTAP version 1", f"# klptrace on kernel {run['kernel']}", f"1..{len(scs)}"]
    for i, s in enumerate(scs, 1):
        for line in [s.get("explanation", ""), *s.get("problems", []), *s.get("diff", [])]:
            if line and s["status"] != "pass":
                out.append(f"# {line}")
        ok = "ok" if s["status"] in ("pass", "skip") else "not ok"
        reason = f" {s['explanation']}" if s["status"] == "skip" else ""
        out.append(f"{ok} {i} {s['id']}{_DIRECTIVE.get(s['status'], '')}{reason}")
    t = run["totals"]
    out.append(f"# Totals: pass:{t['pass']} fail:{t['fail']} xfail:0 xpass:0 "
               f"skip:{t['skip']} error:{t['error']}")
    return "\n".join(out) + "\n"
