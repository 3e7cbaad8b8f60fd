"""guest/stream.py: what the writer puts, the reader gives back, and every stream the reader
refuses (a torn last line is the one cut it forgives)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klptrace.guest import stream
from klptrace.results import Probe, RecordingError, ScenarioResult, Status, Verdict

OK = {"name": "kprobe:klp_enable_patch", "target": "klp_enable_patch", "ok": True,
      "reason": "", "armed": True}
BAD = {"name": "kprobe:y", "target": "y", "ok": False, "reason": "EINVAL"}
P_OK, P_BAD = Probe.from_json(OK, "OK"), Probe.from_json(BAD, "BAD")  # as the records hold them


def _result(sid: str, status: Status = Status.PASS) -> ScenarioResult:
    return ScenarioResult(sid, Verdict(status, ["% insmod lp.ko"], ["% insmod lp.ko"]),
                          duration_s=1.5, start_time="2025-12-01T10:00:00.250+00:00",
                          notes=["a note"])


def _records() -> list[stream.Record]:
    return [stream.Start("6.1.0-9-amd64", {"compile_s": 5.0}, {"arch": "x86_64"}, [P_OK]),
            stream.Begin("a"), stream.Result(_result("a")),
            stream.Result(_result("b", Status.SKIP)),  # skipped: no begin
            stream.Begin("c"), stream.Result(_result("c", Status.ERROR)),
            stream.Wedged("the kernel oopsed"),
            stream.End(3, [P_OK, P_BAD], ["module x"], {"compile_s": 5.0, "detach_s": 0.2})]


def _written(path: Path, records: list[stream.Record]) -> Path:
    out = stream.Writer(str(path))
    for r in records:
        out.put(r)
    out.close()
    out.close()  # twice: nothing happens
    return path


def test_what_is_written_reads_back(tmp_path: Path) -> None:
    got = stream.read(_written(tmp_path / "s.jsonl", _records()))
    assert got.start == _records()[0]
    assert [r.id for r in got.results] == ["a", "b", "c"]
    assert [r.status for r in got.results] == [Status.PASS, Status.SKIP, Status.ERROR]
    assert got.begun is None and got.wedged == "the kernel oopsed"
    assert got.end == stream.End(3, [P_OK, P_BAD], ["module x"], {"compile_s": 5.0,
                                                                "detach_s": 0.2})
    # each result as it was judged, with the run's probes as the end record gives them
    want = _result("a").to_json()
    assert got.results[0].to_json() == want and got.results[0].recording.probes == [P_OK, P_BAD]
    assert got.probes == [P_OK, P_BAD]


def test_the_wire_is_one_object_of_one_key_a_line(tmp_path: Path) -> None:
    path = _written(tmp_path / "s.jsonl", _records())
    lines = path.read_text().splitlines()
    assert [next(iter(json.loads(x))) for x in lines] == [
        "start", "begin", "scenario", "scenario", "begin", "scenario", "wedged", "end"]
    assert lines[0] == ('{"start": {"kernel": "6.1.0-9-amd64", "timing": {"compile_s": 5.0}, '
                        '"kernel_info": {"arch": "x86_64"}, "probes": [' + json.dumps(OK)
                        + ']}}')
    assert lines[1] == '{"begin": "a"}' and lines[6] == '{"wedged": "the kernel oopsed"}'
    assert json.loads(lines[2]) == {"scenario": _result("a").to_json()}
    assert json.loads(lines[-1]) == {"end": {"lost_events": 3, "probes": [OK, BAD],
                                             "leftovers": ["module x"],
                                             "timing": {"compile_s": 5.0, "detach_s": 0.2}}}


def test_a_writer_without_a_path_writes_nothing(tmp_path: Path) -> None:
    out = stream.Writer(None)
    out.put(stream.Begin("a"))
    out.close()
    assert list(tmp_path.iterdir()) == []


def test_a_writer_starts_the_file_afresh(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("what a boot before wrote\n" * 3)
    _written(path, _records()[:2])
    assert stream.read(path).begun == "a"


def test_an_end_without_probes_or_timing_leaves_the_start_s(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"start": {"kernel": "k", "probes": [' + json.dumps(OK) + ']}}\n'
                    '{"end": {"lost_events": 0}}\n')
    got = stream.read(path)
    assert got.end == stream.End() and got.end.probes is None and got.end.timing is None
    assert got.start == stream.Start("k", {}, {}, [P_OK])
    assert got.probes == []  # an end record says what the probes were: none here
    path.write_text('{"start": {"kernel": "k", "probes": [' + json.dumps(OK) + ']}}\n')
    assert stream.read(path).probes == [P_OK]
    assert stream.Boot().probes == []


@pytest.mark.parametrize("cut", [0, 1, 10, 25, 60])
def test_a_torn_last_line_is_what_the_guest_was_writing(tmp_path: Path, cut: int) -> None:
    path = _written(tmp_path / "s.jsonl", _records()[:2])
    whole = path.read_bytes()
    torn = json.dumps({"scenario": _result("a").to_json()}).encode()[:cut]
    path.write_bytes(whole + torn)
    got = stream.read(path)
    assert got.begun == "a" and got.results == [] and got.start is not None


def test_a_stream_cut_anywhere_reads_as_the_records_before_the_cut(tmp_path: Path) -> None:
    full = _written(tmp_path / "full.jsonl", _records()).read_bytes()
    path = tmp_path / "s.jsonl"
    for at in range(len(full) + 1):
        path.write_bytes(full[:at])
        got = stream.read(path)
        whole = full[:at].count(b"\n")  # the records written to their end
        assert (got.start is not None) == (whole >= 1), at
        assert len(got.results) == sum(1 for k in (3, 4, 6) if whole >= k), at
        assert (got.end is not None) == (whole == 8), at


def test_no_file_and_an_empty_file_are_an_empty_stream(tmp_path: Path) -> None:
    assert stream.read(tmp_path / "absent") == stream.Boot()
    (tmp_path / "empty").write_bytes(b"")
    assert stream.read(tmp_path / "empty") == stream.Boot()


START = '{"start": {"kernel": "k"}}'


@pytest.mark.parametrize(("lines", "says"), [
    (["{}"], ":1: expected an object of one key"),
    (["[]"], ":1: expected an object of one key"),
    (['{"start": {"kernel": "k"}, "begin": "a"}'], ":1: expected an object of one key"),
    (["", START], ":1: not JSON"),
    (["not json"], ":1: not JSON"),
    ([START, '{"begin": NaN}'], ":2: begin is NaN, which is not a JSON number"),
    ([START, '{"begin": "a\\udc80"}'], ":2: begin holds a lone surrogate"),
    ([START, '{"sceanrio": {}}'], ":2: sceanrio: not a record klptrace writes"),
    ([START, '{"begin": ""}'], ":2: begin: must be a non-empty string"),
    ([START, '{"begin": 7}'], ":2: begin: must be a non-empty string"),
    ([START, '{"wedged": null}'], ":2: wedged: must be a non-empty string"),
    ([START, '{"scenario": {"status": "pass"}}'], ":2: scenario: needs an 'id'"),
    ([START, '{"scenario": {"id": "a", "status": "fine", "events": []}}'],
     ":2: scenario: 'status' must be one of"),
    ([START, '{"scenario": {"id": "a", "status": "pass"}}'],
     ":2: scenario: 'events' must be a list"),
    (['{"start": []}'], ":1: start: expected a JSON object"),
    (['{"start": {}}'], ":1: start: 'kernel' must be a string"),
    (['{"start": {"kernel": 6}}'], ":1: start: 'kernel' must be a string"),
    (['{"start": {"kernel": "k", "timing": {"compile_s": "5"}}}'],
     ":1: start: timing: 'compile_s' must be a number of seconds"),
    (['{"start": {"kernel": "k", "kernel_info": {"arch": 64}}}'],
     ":1: start: kernel_info: 'arch' must be a string"),
    (['{"start": {"kernel": "k", "probes": [{"name": "x", "ok": "yes"}]}}'],
     ":1: start: probes[0]: 'ok' must be true or false"),
    (['{"start": {"kernel": "k", "probes": {}}}'],
     ":1: start: 'probes' must be a list of objects"),
    ([START, '{"end": {"lost_events": -1}}'],
     ":2: end: 'lost_events' must be a non-negative integer"),
    ([START, '{"end": {"lost_events": 1e400}}'], ":2: end.lost_events is 1e400"),
    ([START, '{"end": {"leftovers": "x"}}'], ":2: end: 'leftovers' must be a list of strings"),
    ([START, '{"end": 0}'], ":2: end: expected a JSON object"),
    (['{"begin": "a"}'], ":1: no start record before this one"),
    ([START, START], ":2: a second start record"),
    ([START, '{"end": {}}', '{"begin": "a"}'], ":3: a record after the end record"),
    ([START, '{"begin": "a"}', '{"begin": "b"}'], ":3: 'b' begins before 'a' has a result"),
    ([START, '{"begin": "a"}', '{"scenario": {"id": "b", "events": []}}'],
     ":3: the result of 'b' while 'a' runs"),
])
def test_a_malformed_line_is_named(tmp_path: Path, lines: list[str], says: str) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("".join(x + "\n" for x in lines))
    with pytest.raises(RecordingError) as e:
        stream.read(path)
    assert e.value.message.startswith(f"{path}{says}"), e.value.message
    assert e.value.hint


def test_bytes_that_are_not_text_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(START.encode() + b'\n{"begin": "\xff"}\n')
    with pytest.raises(RecordingError, match=r"s\.jsonl:2: not UTF-8 text"):
        stream.read(path)
