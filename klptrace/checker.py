"""Expected vs recorded: judge() is a pure function from everything that decides a
scenario's status (its expectation, the recording, the kernel log's witness lines,
a step that failed, an oops, what cleanup left) to the final Verdict. Needs no
kernel; the offline `check` command and most unit tests drive it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence

from klptrace import leak_expect, ledger, stall_expect
from klptrace.oops import Oops
from klptrace.results import Recording, RunDocument, ScenarioResult, Status, Verdict
from klptrace.transcript import render, witnessed

# What a line says, to explain a divergence in the kernel's own terms.
_MEANINGS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?P<p>\S+): (?P<r>pre_patch|post_patch|pre_unpatch|post_unpatch)_callback: "
                r"(?P<o>\S+)(?: -> (?P<s>\[\w+\]))?"),
     "{p}'s {r} callback for klp_object {o}{s_text}"),
    (re.compile(r"^livepatch: enabling patch '(?P<p>[^']+)'"), "enabling {p}"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': initializing (?P<d>\w+) transition"),
     "the start of {p}'s {d} transition (klp_init_transition)"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': starting (?P<d>\w+) transition"),
     "{p}'s {d} transition starting (klp_start_transition)"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': completing (?P<d>\w+) transition"),
     "{p}'s {d} transition completing (klp_complete_transition): every task switched"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': (?P<d>\w+) complete"),
     "the end of {p}'s {d} transition"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': canceling"), "{p}'s failed enable being cancelled"),
    (re.compile(r"^livepatch: '(?P<p>[^']+)': reversing transition"),
     "{p}'s transition being reversed"),
    (re.compile(r"^livepatch: applying patch '(?P<p>[^']+)' to loading module '(?P<m>[^']+)'"),
     "module_coming applying {p} to {m}"),
    (re.compile(r"^livepatch: reverting patch '(?P<p>[^']+)' on unloading module '(?P<m>[^']+)'"),
     "module_going reverting {p} from {m}"),
    (re.compile(r"^livepatch: pre-patch callback failed for object '(?P<o>[^']+)'"),
     "a pre_patch callback failing for {o}"),
    (re.compile(r"^livepatch: patch '(?P<p>[^']+)' failed for module '(?P<m>[^']+)'"),
     "the kernel refusing to load {m} because {p} failed for it"),
    (re.compile(r"^insmod: ERROR"), "the module load failing"),
    (re.compile(r"^% (?P<c>.*)"), "the step `{c}`"),
    (re.compile(r"^stall: (?P<t>[^:]+): "),
     "how the transition's stall held {t} and ended (the scenario's [[stall]])"),
    (re.compile(r"^shadow leak: id (?P<i>\d+) allocated by (?P<m>\S+)"),
     "shadow variables of id {i} that {m} allocated and left behind (the scenario's "
     "[[shadow_leak]])"),
    (re.compile(r"^shadow (?P<op>\w+) (?:<(?P<o>[^>]+)> )?id (?P<i>\d+) by (?P<m>\S+)"),
     "klp_shadow_{op}() of id {i} by {m}"),
    (re.compile(r"^state (?P<op>get|get_prev|declare) (?P<rest>.*?)(?::|$)"),
     "the state call `state {op} {rest}`"),
    (re.compile(r"^livepatch: Livepatch patch \((?P<p>[^)]+)\) is not compatible"),
     "klp_enable_patch() refusing {p}: its states are older than the installed ones"),
    (re.compile(r"^(?P<m>\S+): (?P=m)_init$"), "{m}'s init running"),
    (re.compile(r"^(?P<m>\S+): (?P=m)_exit$"), "{m}'s exit running"),
]


def meaning(line: str) -> str:
    """What a transcript line stands for, in a phrase."""
    for pat, fmt in _MEANINGS:
        m = pat.match(line)
        if m:
            g = {k: v or "" for k, v in m.groupdict().items()}
            g["s_text"] = f" (its module {g['s']})" if g.get("s") else ""
            return fmt.format(**g)
    return f"`{line}`"


def first_divergence(expected: Sequence[str], recorded: Sequence[str]) -> int | None:
    """The line of expected (1-based) where recorded first goes another way; None if none.
    explain() names the same line."""
    sm = difflib.SequenceMatcher(a=list(expected), b=list(recorded), autojunk=False)
    return next((i1 + 1 for tag, i1, *_ in sm.get_opcodes() if tag != "equal"), None)


def explain(expected: Sequence[str], recorded: Sequence[str]) -> str:
    """The first divergence between two transcripts, and what it means."""
    sm = difflib.SequenceMatcher(a=list(expected), b=list(recorded), autojunk=False)
    for tag, i1, _i2, j1, _j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        after = f" after `{expected[i1 - 1]}`" if i1 > 0 else " at the start"
        if tag == "delete":
            line = expected[i1]
            if line in recorded[j1:]:
                return (f"line {i1 + 1}: {meaning(line)} happened later than expected{after}: "
                        "the order differs from what the livepatch core promises")
            return (f"line {i1 + 1}: expected {meaning(line)}{after}, but it was not recorded: "
                    "the kernel did not do it (or a probe missed it)")
        if tag == "insert":
            line = recorded[j1]
            if line in expected[i1:]:
                return (f"line {i1 + 1}: {meaning(line)} happened earlier than expected{after}: "
                        "the order differs from what the livepatch core promises")
            return (f"line {i1 + 1}: recorded {meaning(line)}{after}, which the livepatch "
                    "core must not do here")
        exp, got = expected[i1], recorded[j1]
        if got in expected[i1:] or exp in recorded[j1:]:
            return (f"line {i1 + 1}: expected {meaning(exp)}, but {meaning(got)} came first: "
                    "the order differs from what the livepatch core promises")
        return f"line {i1 + 1}: expected {meaning(exp)}, but recorded {meaning(got)} instead"
    return ""


def integrity(rec: Recording) -> list[str]:
    """Why a recording cannot be trusted: lost events, probes that did not attach or
    that the kernel did not arm when their module came."""
    problems = []
    if rec.lost:
        problems.append(f"{rec.lost} events were lost (the BPF ring buffer was full)")
    for p in rec.failed_probes:
        what = "was not armed" if p.armed is False else "did not attach"
        problems.append(f"probe {p.name} {what}: {p.reason or 'unknown'}")
    return problems


def judge(expected: Sequence[str], rec: Recording, *, dmesg: Sequence[str] | None = None,
          step_error: str = "", oops: Sequence[str] = (), leftovers: Sequence[str] = (),
          problems: Sequence[str] = ()) -> Verdict:
    """The final verdict on one scenario. Exact order is a pass; anything that makes the
    recording untrustworthy, a kernel log that disagrees with it (dmesg, when compared),
    a step that failed (step_error, with the oops's lines if the kernel oopsed), what
    cleanup could not remove (leftovers), a shadow variable misused or left behind
    unexpected (ledger.py), or other problems make it an error."""
    # a stall or a leak the scenario states is told as lines of its transcript
    # (stall_expect.py, leak_expect.py)
    klp = ledger.of(rec.events)
    recorded = (render(rec.events) + stall_expect.recorded(expected, rec.events)
                + leak_expect.recorded(expected, klp))
    misused = [p.text for p in klp.problems] + leak_expect.unexpected(expected, klp)
    diff = list(difflib.unified_diff(list(expected), recorded, "expected", "recorded", lineterm=""))
    found = integrity(rec) + list(problems)
    divergence = None  # set while the explanation leads with it
    if found:
        status, why = Status.ERROR, "the recording cannot be trusted: " + "; ".join(found)
    elif list(expected) == recorded:
        status, why = Status.PASS, ""
    else:
        status, why = Status.FAIL, explain(expected, recorded)
        divergence = first_divergence(expected, recorded)
    if misused:
        status, why = Status.ERROR, "; ".join(x for x in (why, *misused) if x)
        found += misused
    if dmesg is not None and (problem := witness(recorded, dmesg)):
        status, why = Status.ERROR, "; ".join(x for x in (why, problem) if x)
        found.append(problem)
    if step_error:
        status, why = Status.ERROR, "; ".join(x for x in (step_error, why) if x)
        found += [step_error, *Oops(list(oops), True).summary]
        divergence = None  # the failed step explains the verdict first
    if leftovers:
        status = Status.ERROR
        found += leftovers
    return Verdict(status, list(expected), recorded, why,
                   diff if status != Status.PASS else [], found, divergence,
                   list(klp.leaks), list(klp.problems))


def witness(recorded: Sequence[str], dmesg: Sequence[str]) -> str:
    """'' when the kernel log shows the same witnessed lines as the BPF recording."""
    bpf = witnessed(recorded)
    log = list(dmesg)
    if bpf == log:
        return ""
    first = explain(log, bpf)
    return f"dmesg disagrees with the BPF recording: {first} (dmesg as expected, BPF as recorded)"


def rejudge(result: ScenarioResult, expected: Sequence[str] | None = None,
            problems: Sequence[str] = ()) -> ScenarioResult:
    """A scenario's result judged again from its facts (against expected, when given, or
    the expectation it was judged on), with problems found since."""
    v = judge(result.verdict.expected if expected is None else expected, result.recording,
              dmesg=result.dmesg, step_error=result.step_error, oops=result.oops,
              leftovers=result.leftovers, problems=problems)
    return dataclasses.replace(result, verdict=v)


def account_lost(doc: RunDocument) -> RunDocument:
    """The run with events lost that no scenario's own count accounts for made a problem of
    every judged scenario: the BPF ring buffer's counter is global, so those events may
    belong to any scenario's recording, and none of them can pass."""
    n = doc.unaccounted_lost
    if not n:
        return doc
    own = doc.lost_events - n
    why = (f"{n} events were lost that no scenario accounts for (lost_events "
           f"{doc.lost_events} in all, {own} in the scenarios): this recording may lack some")
    return dataclasses.replace(doc, scenarios=[
        s if s.status == Status.SKIP else rejudge(s, problems=[why]) for s in doc.scenarios])


def ran_anyway(result: ScenarioResult) -> list[str]:
    """Why a result saved as skipped cannot be a skip: a skipped scenario ran nothing, so
    it recorded no events, lost none, and no step of it failed or left anything."""
    rec, out = result.recording, []
    if rec.events:
        out.append(f"saved as skipped, but it recorded {len(rec.events)} events: "
                   "a skipped scenario runs nothing")
    if rec.lost:
        out.append(f"saved as skipped, but {rec.lost} of its events were lost: "
                   "a skipped scenario records nothing")
    if result.step_error or result.oops or result.leftovers:
        out.append("saved as skipped, but a step of it failed or left something behind")
    return out


def recheck(doc: RunDocument, expect: Mapping[str, Sequence[str]]) -> RunDocument:
    """A saved run judged again, trusting none of its statuses: every scenario against
    expect[id], a skip too when something shows that it ran, and every scenario that ran
    an error when the run attached no probes (nothing could have been recorded)."""
    unattached = [] if doc.probes else [
        "no probes were attached (the run lists none): nothing could be recorded"]
    out = []
    for r in doc.scenarios:
        expected = list(expect[r.id])
        contradictions = ran_anyway(r) if r.status == Status.SKIP else []
        if r.status == Status.SKIP and not contradictions:  # nothing ran: nothing to judge
            out.append(dataclasses.replace(r, verdict=dataclasses.replace(r.verdict,
                                                                          expected=expected)))
        else:
            out.append(rejudge(r, expected, [*contradictions, *unattached]))
    return account_lost(dataclasses.replace(doc, scenarios=out))
