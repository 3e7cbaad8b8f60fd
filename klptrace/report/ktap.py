"""ktap: KTAP version 1, one test line per scenario, diagnostics after problems; a matrix
is one test per kernel with its scenarios as subtests.

Every line is one line of KTAP whatever the recording holds: a line break or another
control character in a scenario id, a kernel name or a problem is written as an escape
(\\x0a), so it cannot start a line of its own (an injected `ok`); a `#` in a test's
description is escaped as KTAP asks (\\#), so it cannot start a directive (`# SKIP`).

A stalling scenario's stall report (stall.brief_lines) is a block of diagnostics too,
pass or fail. Diagnostics go before their test's result line, as
Documentation/dev-tools/ktap.rst asks ("diagnostic lines regarding a test are directly
before the test result line for that test").

A scenario's shadow leaks (ledger.brief_lines: each one's address, id, allocating module
and time) follow its problems, pass or fail: a leak the scenario does not expect is an
error whose problems say so, one it expects passes and is still listed. Its misused
shadow variables are among its problems.
"""

from collections.abc import Mapping

from klptrace.ledger import brief_lines as leak_lines
from klptrace.report.markup import one_line
from klptrace.results import Matrix, RunDocument, Status
from klptrace.stall import brief_lines


def _description(text: str) -> str:
    """A test's description: one line, and no `#` to start a directive."""
    return one_line(text).replace("#", "\\#")


def _tests(run: RunDocument, indent: str = "") -> list[str]:
    scs = run.scenarios
    out = [f"{indent}1..{len(scs)}"]
    for i, s in enumerate(scs, 1):
        v = s.verdict
        said = [v.explanation, *v.problems] if s.status != Status.PASS else []
        diff = v.diff if s.status != Status.PASS else []
        for line in [*said, *leak_lines(v.shadow_leaks), *diff,
                     *brief_lines(s.stall, v.recorded)]:
            if line:
                out.append(f"{indent}# {one_line(line)}")
        ok = "ok" if s.status in (Status.PASS, Status.SKIP) else "not ok"
        skip = f" # SKIP {one_line(v.explanation)}" if s.status == Status.SKIP else ""
        out.append(f"{indent}{ok} {i} {_description(s.id)}{skip}")
    return out


def _totals(t: Mapping[Status, int]) -> str:
    return (f"# Totals: pass:{t[Status.PASS]} fail:{t[Status.FAIL]} xfail:0 xpass:0 "
            f"skip:{t[Status.SKIP]} error:{t[Status.ERROR]}")


def render(m: Matrix) -> str:
    if m.run is not None:
        out = ["KTAP version 1", f"# klptrace on kernel {one_line(m.run.kernel)}",
               *_tests(m.run), _totals(m.run.totals)]
        return "\n".join(out) + "\n"
    out = ["KTAP version 1", f"# klptrace on {len(m.runs)} kernels", f"1..{len(m.runs)}"]
    for i, r in enumerate(m.runs, 1):
        kernel = one_line(r.kernel)
        out += ["    KTAP version 1", f"    # Subtest: {kernel}", *_tests(r, "    ")]
        bad = r.totals[Status.FAIL] + r.totals[Status.ERROR]
        out.append(f"{'not ok' if bad else 'ok'} {i} {_description(r.kernel)}")
    out.append(_totals(m.totals))
    return "\n".join(out) + "\n"
