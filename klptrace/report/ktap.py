"""ktap: KTAP version 1, one test line per scenario, diagnostics after problems; a matrix
is one test per kernel with its scenarios as subtests."""

from typing import Any

from klptrace.results import Status, is_matrix


def _tests(run: dict[str, Any], indent: str = "") -> list[str]:
    scs = run["scenarios"]
    out = [f"{indent}1..{len(scs)}"]
    for i, s in enumerate(scs, 1):
        if s["status"] != Status.PASS:
            for line in [s.get("explanation", ""), *s.get("problems", []), *s.get("diff", [])]:
                if line:
                    out.append(f"{indent}# {line}")
        ok = "ok" if s["status"] in (Status.PASS, Status.SKIP) else "not ok"
        skip = f" # SKIP {s['explanation']}" if s["status"] == Status.SKIP else ""
        out.append(f"{indent}{ok} {i} {s['id']}{skip}")
    return out


def _totals(t: dict[str, int]) -> str:
    return (f"# Totals: pass:{t['pass']} fail:{t['fail']} xfail:0 xpass:0 skip:{t['skip']} "
            f"error:{t['error']}")


def render(run: dict[str, Any]) -> str:
    if not is_matrix(run):
        out = ["KTAP version 1", f"# klptrace on kernel {run['kernel']}", *_tests(run),
               _totals(run["totals"])]
        return "\n".join(out) + "\n"
    out = ["KTAP version 1", f"# klptrace on {len(run['runs'])} kernels", f"1..{len(run['runs'])}"]
    for i, r in enumerate(run["runs"], 1):
        out += ["    KTAP version 1", f"    # Subtest: {r['kernel']}", *_tests(r, "    ")]
        bad = r["totals"]["fail"] + r["totals"]["error"]
        out.append(f"{'not ok' if bad else 'ok'} {i} {r['kernel']}")
    out.append(_totals(run["totals"]))
    return "\n".join(out) + "\n"
