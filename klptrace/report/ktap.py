"""ktap: KTAP version 1, one test line per scenario, diagnostics after problems; a matrix
is one test per kernel with its scenarios as subtests.

Every line is one line of KTAP whatever the recording holds: a line break or another
control character in a scenario id, a kernel name or a problem is written as an escape
(\\x0a), so it cannot start a line of its own (an injected `ok`); a `#` in a test's
description is escaped as KTAP asks (\\#), so it cannot start a directive (`# SKIP`).
"""

import re
from typing import Any

from klptrace.results import Status, is_matrix

# C0 (but tab) and C1 controls, and the separators str.splitlines() also breaks lines at
_BREAKS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(text: str) -> str:
    """text on one line: control characters and line separators as escapes."""
    return _BREAKS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                       else f"\\u{ord(m[0]):04x}", text)


def _description(text: str) -> str:
    """A test's description: one line, and no `#` to start a directive."""
    return _one_line(text).replace("#", "\\#")


def _tests(run: dict[str, Any], indent: str = "") -> list[str]:
    scs = run["scenarios"]
    out = [f"{indent}1..{len(scs)}"]
    for i, s in enumerate(scs, 1):
        if s["status"] != Status.PASS:
            for line in [s.get("explanation", ""), *s.get("problems", []), *s.get("diff", [])]:
                if line:
                    out.append(f"{indent}# {_one_line(line)}")
        ok = "ok" if s["status"] in (Status.PASS, Status.SKIP) else "not ok"
        skip = f" # SKIP {_one_line(s['explanation'])}" if s["status"] == Status.SKIP else ""
        out.append(f"{indent}{ok} {i} {_description(s['id'])}{skip}")
    return out


def _totals(t: dict[str, int]) -> str:
    return (f"# Totals: pass:{t['pass']} fail:{t['fail']} xfail:0 xpass:0 skip:{t['skip']} "
            f"error:{t['error']}")


def render(run: dict[str, Any]) -> str:
    if not is_matrix(run):
        out = ["KTAP version 1", f"# klptrace on kernel {_one_line(run['kernel'])}",
               *_tests(run), _totals(run["totals"])]
        return "\n".join(out) + "\n"
    out = ["KTAP version 1", f"# klptrace on {len(run['runs'])} kernels", f"1..{len(run['runs'])}"]
    for i, r in enumerate(run["runs"], 1):
        kernel = _one_line(r["kernel"])
        out += ["    KTAP version 1", f"    # Subtest: {kernel}", *_tests(r, "    ")]
        bad = r["totals"]["fail"] + r["totals"]["error"]
        out.append(f"{'not ok' if bad else 'ok'} {i} {_description(r['kernel'])}")
    out.append(_totals(run["totals"]))
    return "\n".join(out) + "\n"
