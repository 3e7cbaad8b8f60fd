"""The pure part of `klptrace trace`: /dev/kmsg writes paired with their text."""

from klptrace import trace
from klptrace.events import Event, EventKind
from klptrace.transcript import render


def test_merge_log_turns_percent_lines_into_steps() -> None:
    evs = [Event(EventKind.KMSG_WRITE, 1), Event(EventKind.MODULE_INIT_RET, 2, object="m", ret=0),
           Event(EventKind.KMSG_WRITE, 3), Event(EventKind.KMSG_WRITE, 4)]
    m = trace.merge_log(evs, ["% insmod m.ko", "systemd: hello",
                              "insmod: ERROR: could not insert module x.ko: No such device"])
    assert render(m.events) == ["% insmod m.ko", "m: m_init",
                                "insmod: ERROR: could not insert module x.ko: No such device"]
    assert not m.notes


def test_merge_log_says_when_counts_differ() -> None:
    m = trace.merge_log([Event(EventKind.KMSG_WRITE, 1)], [])
    assert m.notes and render(m.events) == []


def test_a_trace_tells_its_leaks_as_expectation_lines_and_problems() -> None:
    from test_ledger import LP, _leaky

    from klptrace.results import Recording, TraceDocument
    events = _leaky().events
    sh = trace.shadows(events)
    assert sh.lines == [f"shadow leak: id 7 allocated by {LP}"]
    # one problem for the two variables of one id and module: obj#1 and obj#2
    assert sh.problems == [
        f"2 shadow variables of id 7 allocated by {LP} never freed (obj#1, obj#2): {LP} is "
        f"gone and no installed livepatch declares state 7 (a leak; `shadow leak: id 7 "
        f"allocated by {LP}` expects it)"]
    doc = TraceDocument("6.1", ["true"], 0, Recording(events), render(events) + sh.lines,
                        problems=sh.problems, shadow_leaks=list(sh.ledger.leaks))
    d = doc.to_json()
    assert [k["shadow_id"] for k in d["shadow_leaks"]] == [7, 7]
    assert "shadow_problems" not in d
    assert trace.shadows(events[:5]).problems == []
