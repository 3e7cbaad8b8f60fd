"""kcidb: a run (or a matrix of runs) in KernelCI's KCIDB I/O schema, for kcidb-submit.

One checkout and one build per kernel, one test per scenario. Fields the run
document does not carry (saved runs from before kernel_info and start_time) are
left out, as the schema allows, and named in the object's misc.not_recorded.

A test's text goes in its log_excerpt (the schema's "part of the test output ... most
relevant to the test outcome", a string of at most 16384 characters and no NUL): what
went wrong, a scenario's shadow leaks (ledger.brief_lines) and a stalling scenario's
stall report, pass or fail. A leak the scenario does not expect, and a misused shadow
variable, made its status ERROR (checker.judge); their texts are among its problems.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from klptrace.ledger import brief_lines as leak_lines
from klptrace.results import Matrix, RunDocument, ScenarioResult, Status
from klptrace.stall import brief_lines

DEFAULT_ORIGIN = "klptrace"
#: KCIDB's pattern for an origin (and the part of every id before the colon)
ORIGIN_RE = re.compile(r"[a-z0-9_]+")
#: The lowest schema version with every field used here: kcidb tools since v5.0 accept it.
VERSION = {"major": 5, "minor": 0}
#: The test path of a scenario is PATH_PREFIX.<scenario id>
PATH_PREFIX = "livepatch.callbacks"
#: How many lines of a diff or an oops go into a log excerpt
EXCERPT_LINES = 30
#: The schema's maxLength for log_excerpt
EXCERPT_MAX = 16384

_STATUS = {Status.PASS: "PASS", Status.FAIL: "FAIL", Status.ERROR: "ERROR", Status.SKIP: "SKIP"}
_PATH_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# kernel_info fields that name the build, and where they go when present
_BUILD_MISC = ("release", "build", "builder", "linker", "debian_version", "package", "suite")


def render(m: Matrix, *, origin: str = DEFAULT_ORIGIN) -> str:
    """The KCIDB report of a run or of a matrix of runs, as JSON."""
    if not ORIGIN_RE.fullmatch(origin):
        raise ValueError(f"a KCIDB origin is lower-case letters, digits and _, not {origin!r}")
    data: dict[str, Any] = {"version": dict(VERSION), "checkouts": [], "builds": [],
                            "tests": []}
    for r in m.runs:
        checkout, build = _checkout(r, origin), _build(r, origin)
        data["checkouts"].append(checkout)
        data["builds"].append(build)
        digest = _run_digest(r)
        data["tests"] += [_test(s, i, f"{origin}:{_kernel_key(r)}", digest, origin)
                          for i, s in enumerate(r.scenarios, 1)]
    return json.dumps(_no_nul(data), indent=1, allow_nan=False) + "\n"


def _kernel_key(run: RunDocument) -> str:
    """The kernel's part of checkout and build ids: its release and Debian version."""
    info = run.kernel_info or {}
    return ":".join(x for x in (run.kernel, info.get("debian_version", "")) if x)


def _run_digest(run: RunDocument) -> str:
    """Twelve hex digits that tell this run from another run of the same kernel.

    From what was recorded (each scenario's events carry the kernel's clock), so
    that `check` re-rendering a saved run gives the same test ids."""
    recorded = [run.kernel] + [[s.id, s.start_time, [e.to_json() for e in s.recording.events]]
                               for s in run.scenarios]
    text = json.dumps(recorded, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _not_recorded(run: RunDocument) -> list[str]:
    return [] if run.kernel_info else ["kernel_info"]


def _checkout(run: RunDocument, origin: str) -> dict[str, Any]:
    """The kernel's source: Debian's linux source package when the kernel says so."""
    info = run.kernel_info or {}
    deb = info.get("debian_version", "")
    out: dict[str, Any] = {
        "id": f"{origin}:{_kernel_key(run)}",
        "origin": origin,
        "comment": f"Debian linux {deb}" if deb else f"the source of Linux {run.kernel}",
        # the kernel ran the scenarios, so its source was obtained and built
        "valid": True,
    }
    if deb:
        out["tree_name"] = "debian"
    misc: dict[str, Any] = {"release": run.kernel}
    if _not_recorded(run):
        misc["not_recorded"] = _not_recorded(run)
    out["misc"] = misc
    return out


def _build(run: RunDocument, origin: str) -> dict[str, Any]:
    """The kernel's build: package, architecture and compiler from kernel_info."""
    info = run.kernel_info or {}
    key = _kernel_key(run)
    package = info.get("package", "")
    deb = info.get("debian_version", "")
    name = " ".join(x for x in (package or f"Linux {run.kernel}", deb) if x)
    out: dict[str, Any] = {
        "id": f"{origin}:{key}",
        "checkout_id": f"{origin}:{key}",
        "origin": origin,
        "comment": name,
        # it booted and ran klptrace: the run document is written from inside it
        "status": "PASS",
    }
    arch = str(info.get("arch", "")).lower()
    if arch and re.fullmatch(r"[a-z0-9_]+", arch):
        out["architecture"] = arch
    if info.get("compiler"):
        out["compiler"] = str(info.get("compiler"))
    misc: dict[str, Any] = {k: v for k in _BUILD_MISC if (v := info.get(k))}
    misc.setdefault("release", run.kernel)
    misc["lost_events"] = run.lost_events
    missing = _not_recorded(run) or [k for k in ("arch", "compiler") if not info.get(k)]
    if missing:
        misc["not_recorded"] = missing
    out["misc"] = misc
    return out


def _test(sc: ScenarioResult, index: int, build_id: str, digest: str,
          origin: str) -> dict[str, Any]:
    """One scenario as a KCIDB test: path, status, time, and what went wrong."""
    build_key = build_id.split(":", 1)[1]
    out: dict[str, Any] = {
        # the index: `run --repeat N` has each scenario N times
        "id": f"{origin}:{build_key}:{digest}:{index}:{sc.id}",
        "build_id": build_id,
        "origin": origin,
        "path": f"{PATH_PREFIX}.{_PATH_UNSAFE.sub('_', sc.id)}",
        "status": _STATUS[sc.status],
        "duration": sc.seconds,
    }
    if sc.start_time:
        out["start_time"] = sc.start_time
    if sc.verdict.explanation:
        out["comment"] = _clean(sc.verdict.explanation)
    excerpt = log_excerpt(sc)
    if excerpt:
        out["log_excerpt"] = excerpt
    misc: dict[str, Any] = {"scenario": sc.id, "events": len(sc.recording.events),
                            "lost_events": sc.recording.lost}
    if sc.notes:
        misc["notes"] = sc.notes
    if not sc.start_time:
        misc["not_recorded"] = ["start_time"]
    out["misc"] = misc
    return out


def log_excerpt(sc: ScenarioResult) -> str:
    """The explanation, the problems, the shadow leaks (ledger.brief_lines), the first
    lines of the diff and of the oops, then a stalling scenario's stall report
    (stall.brief_lines), all within the schema's limit."""
    v = sc.verdict
    lines = [v.explanation] if v.explanation else []
    lines += [f"problem: {p}" for p in v.problems]
    lines += leak_lines(v.shadow_leaks)
    for what, part in (("diff", v.diff), ("oops", sc.oops)):
        if part:
            lines.append(f"{what}:")
            lines += part[:EXCERPT_LINES]
            if len(part) > EXCERPT_LINES:
                lines.append(f"... ({len(part) - EXCERPT_LINES} more lines of the {what})")
    lines += brief_lines(sc.stall, v.recorded)
    text = _clean("\n".join(lines) + "\n") if lines else ""
    if len(text) > EXCERPT_MAX:
        cut = "\n... (cut to the schema's limit)\n"
        text = text[:EXCERPT_MAX - len(cut)] + cut
    return text


def _clean(text: str) -> str:
    """Text as the schema takes it: no NUL characters."""
    return text.replace("\0", "\\0")


def _no_nul(v: Any) -> Any:
    """v with every string in it _clean: the schema refuses NUL in ids, names and comments,
    and a run's kernel and scenario ids are in all of them."""
    if isinstance(v, str):
        return _clean(v)
    if isinstance(v, dict):
        return {_clean(k): _no_nul(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_no_nul(x) for x in v]
    return v
