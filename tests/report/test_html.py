"""`--format html` (klptrace/report/html.py, report/timeline.py) on the saved real run
(tests/data/run-6.1.json, recorded in the lab guest): the timeline's layout in pixels
(bars, ticks and marks where their events are; no two labels overlap, in any scenario),
escaping, a failing re-check's first divergence, a stall, a matrix; then the page in
headless Chromium (tests/browser.py): the table, every scenario's timeline and its
labels drawn, visible and apart.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import browser
import pytest
from hypothesis import given
from hypothesis import strategies as st
from util import REPO, saved_run, skip_or_fail

from klptrace import cli, results, stall, story
from klptrace.events import Direction, Event, EventKind, Reason
from klptrace.report import html, render
from klptrace.report import timeline as tl
from klptrace.stall_report import Source, StallReport, StallTask

RUN = saved_run()
IDS = [s["id"] for s in RUN["scenarios"]]


def _sd(doc: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in doc["scenarios"] if s["id"] == sid)


def _events(sd: dict[str, Any]) -> list[Event]:
    return [Event.from_json(e) for e in sd["events"]]


def _stall_of(sd: dict[str, Any]) -> StallReport | None:
    """A scenario's saved stall report, as the result model reads it."""
    return StallReport.from_json(sd["stall"], "stall") if sd.get("stall") else None


def _result(sd: dict[str, Any]) -> results.ScenarioResult:
    return results.ScenarioResult.from_json(sd, str(sd["id"]))


def _with_stall(run: dict[str, Any], blocked: bool = True) -> dict[str, Any]:
    """The saved run, with busy-target-module as a recording with the klp_check_and_switch_task
    probe would have it (the saved one predates that probe): its worker not switched at the
    patching transition's one try, and the stall report that `klptrace run` attaches
    (StallReport, stall.timeline). blocked=False: the report alone, from /proc."""
    run = copy.deepcopy(run)
    sd = _sd(run, "busy-target-module")
    evs = _events(sd)
    first_try = next(e for e in evs if e.kind == EventKind.TRANSITION_TRY)
    if blocked:
        evs.insert(evs.index(first_try) + 1, Event(
            EventKind.TASK_BLOCKED, first_try.ts_ns + 40_000, 61, 61, "kworker/0:2",
            "klptrace_lp", "klptrace_busy_work_func", state=1, ret=-98))
    sd["events"] = [e.to_json() for e in evs]
    task = StallTask(61, 61, "kworker/0:2", Reason.SLEEPING_ON_FUNCTION,
                     "klptrace_busy_work_func", True, "I",
                     ["[<0>] klptrace_busy_work_func+0x2a/0x50 [klptrace_busy]"], 0.11,
                     Source.BPF if blocked else Source.PROC)
    rep = StallReport("klptrace_lp", Direction.PATCHING, [task], 0.11, 1)
    rep.timeline = stall.timeline(evs, "klptrace_lp")
    rep.next_steps = stall.next_steps(rep)
    sd["stall"] = rep.to_json()
    return run


def _failing(tmp_path: Path) -> tuple[Path, Path]:
    """The saved run with module-going-notifier's pre_unpatch for klptrace_target dropped,
    re-checked by `klptrace check --format html`: (the page, the JSON re-check)."""
    run = copy.deepcopy(RUN)
    sd = _sd(run, "module-going-notifier")
    sd["events"] = [e for e in sd["events"] if not (
        e["kind"] == "callback" and e.get("callback") == "pre_unpatch"
        and e.get("object") == "klptrace_target")]
    src = tmp_path / "failing.json"
    src.write_text(json.dumps(run))
    page, doc = tmp_path / "failing.html", tmp_path / "failing-checked.json"
    assert cli.main(["check", str(src), "--format", "html", "-o", str(page)]) == 1
    assert cli.main(["check", str(src), "--format", "json", "-o", str(doc)]) == 1
    return page, doc


# ---- layout ----

def _layouts() -> list[tuple[str, tl.Layout]]:
    out = [(sid, tl.layout(_events(_sd(RUN, sid)), _stall_of(_sd(RUN, sid)))) for sid in IDS]
    for blocked in (True, False):
        sd = _sd(_with_stall(RUN, blocked), "busy-target-module")
        out.append((f"busy-target-module+stall({blocked})",
                    tl.layout(_events(sd), _stall_of(sd))))
    return out


@pytest.mark.parametrize("width", [tl.WIDTH, 900])
@pytest.mark.parametrize("sid", [*IDS, "stall"])
def test_no_two_labels_or_marks_overlap(sid: str, width: float) -> None:
    docs = ([(s, _sd(RUN, s)) for s in [sid]] if sid != "stall" else
            [(sid, _sd(_with_stall(RUN, b), "busy-target-module")) for b in (True, False)])
    for _name, sd in docs:
        lay = tl.layout(_events(sd), _stall_of(sd), width=width)
        assert len(lay.labels) > 10
        assert tl.overlaps(lay) == []


def test_overlaps_finds_a_collision() -> None:
    lay = tl.layout(_events(_sd(RUN, "busy-target-module")))
    lb = lay.labels[-1]
    lay.labels.append(tl.Label("x", lb.x + 2, lb.y, tl.Box(lb.box.x + 2, lb.box.y, 9, 9), "x"))
    assert any("overlaps" in f for f in tl.overlaps(lay))


@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 300)), max_size=40))
def test_pack_keeps_spans_in_a_row_apart(spans: list[tuple[float, float]]) -> None:
    boxes = [(x, x + w) for x, w in spans]
    rows = tl.pack(boxes, gap=8)
    assert len(rows) == len(boxes)
    for i, (a0, a1) in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            if rows[i] == rows[j]:
                b0, b1 = boxes[j]
                assert a1 + 8 <= b0 or b1 + 8 <= a0
    assert not rows or sorted(set(rows)) == list(range(max(rows) + 1))


def test_pack_first_fit() -> None:
    assert tl.pack([(0, 10), (30, 40), (60, 70)]) == [0, 0, 0]
    assert tl.pack([(0, 100), (5, 50), (10, 20), (60, 70)]) == [0, 1, 2, 1]


def test_text_width_counts_wide_characters_twice() -> None:
    assert tl.text_width("abcd") == 4 * tl.CHAR_W
    assert tl.text_width("ab漢") == 4 * tl.CHAR_W


def _x(lay: tl.Layout, ts: int) -> float:
    return lay.plot_x0 + (ts - lay.t0_ns) / lay.ns_per_px


def _lane_at(lay: tl.Layout, y: float) -> tl.Lane:
    return next(la for la in lay.lanes if la.y <= y <= la.y + la.h)


def test_busy_target_module_transition_is_reversed() -> None:
    evs = _events(_sd(RUN, "busy-target-module"))
    segs = story.of(evs).legs["klptrace_lp"]
    at = {k: next(e.ts_ns for e in evs if e.kind == k) for k in (
        EventKind.TRANSITION_INIT, EventKind.TRANSITION_REVERSE, EventKind.TRANSITION_DONE)}
    assert [(s.direction, s.after, s.end, len(s.tries)) for s in segs] == [
        ("patching", "", "reversed", 1), ("unpatching", "reversed", "complete", 1)]
    assert segs[0].t0 == at[EventKind.TRANSITION_INIT]
    assert segs[0].t1 == segs[1].t0 == at[EventKind.TRANSITION_REVERSE]
    assert segs[1].t1 == at[EventKind.TRANSITION_DONE]
    lay = tl.layout(evs)
    bars = [b for b in lay.bars if b.cls in ("patching", "unpatching")]
    assert [(b.cls, round(b.x0, 3)) for b in bars] == [
        ("patching", round(_x(lay, segs[0].t0), 3)), ("unpatching", round(_x(lay, segs[1].t0), 3))]
    tries = [e.ts_ns for e in evs if e.kind == EventKind.TRANSITION_TRY]
    assert sorted(t.x for t in lay.ticks if t.cls == "try") == [_x(lay, t) for t in tries]
    texts = [lb.text for lb in lay.labels]
    assert "patching · 1 try · 138 ms → reversed" in texts
    assert "unpatching, reversed · 1 try · 1.33 s → complete" in texts


def test_cancelled_transition_and_failed_pre_patch() -> None:
    evs = _events(_sd(RUN, "pre-patch-callback-enodev"))
    segs = story.of(evs).legs["klptrace_lp"]
    assert [(s.direction, s.after, s.end) for s in segs] == [
        ("patching", "", "cancelled"), ("unpatching", "cancelled", "complete")]
    lay = tl.layout(evs)
    assert [b.cls for b in lay.bars if "patching" in b.cls] == ["patching", "unpatching cancelled"]
    fails = {lb.text for lb in lay.labels if lb.cls == "fail"}
    assert "pre_patch → -ENODEV, failed" in fails
    assert "init failed: -ENODEV" in fails
    assert "insmod: ERROR: could not insert module klptrace_lp.ko: No such device" in fails


def test_every_callback_is_a_mark_on_its_klp_object_lane() -> None:
    roles = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")
    for sid in IDS:
        evs = _events(_sd(RUN, sid))
        lay = tl.layout(evs)
        want = sorted((f"livepatch {e.patch}", e.object, e.callback.word if e.callback else "",
                       round(_x(lay, e.ts_ns), 3)) for e in evs if e.kind == EventKind.CALLBACK)
        got = sorted((_lane_at(lay, m.y).group, _lane_at(lay, m.y).name, m.shape, round(m.x, 3))
                     for m in lay.marks if m.shape in roles)
        assert got == want, sid
        assert want, sid


def test_modules_are_loaded_from_coming_to_free() -> None:
    evs = _events(_sd(RUN, "busy-target-module"))
    lay = tl.layout(evs)
    lanes = {la.name: la for la in lay.lanes if la.group == "modules"}
    assert list(lanes) == ["klptrace_busy", "klptrace_lp (livepatch)", "klptrace_target"]
    target = lanes["klptrace_target"]
    spans = [b for b in lay.bars if target.y <= b.y <= target.y + target.h]
    ts = {k: next(e.ts_ns for e in evs if e.kind == k and e.object == "klptrace_target")
          for k in (EventKind.MODULE_COMING, EventKind.MODULE_FREE)}
    assert [b.cls for b in spans] == ["mod-coming", "mod-live", "mod-going"]
    assert spans[0].x0 == pytest.approx(_x(lay, ts[EventKind.MODULE_COMING]))
    assert spans[-1].x1 == pytest.approx(_x(lay, ts[EventKind.MODULE_FREE]))
    assert not any(b.open_end for b in spans)
    # a module its coming notifier refused is gone at the refusal, with no free_module
    lay = tl.layout(_events(_sd(RUN, "module-coming-pre-patch-callback-enodev")))
    target = next(la for la in lay.lanes if la.name == "klptrace_target" and
                  la.group == "modules")
    spans = [b for b in lay.bars if target.y <= b.y <= target.y + target.h]
    assert [(b.cls, b.open_end) for b in spans] == [("mod-coming", False)]


def test_stall_tasks_held_the_transition() -> None:
    sd = _sd(_with_stall(RUN), "busy-target-module")
    evs = _events(sd)
    lay = tl.layout(evs, _stall_of(sd))
    lane = next(la for la in lay.lanes if la.kind == "task")
    assert (lane.group, lane.name) == ("tasks not switched (klptrace_lp)", "kworker/0:2:61")
    bar = next(b for b in lay.bars if b.cls == "blocked")
    blocked = next(e for e in evs if e.kind == EventKind.TASK_BLOCKED)
    reverse = next(e for e in evs if e.kind == EventKind.TRANSITION_REVERSE)
    assert bar.x0 == pytest.approx(_x(lay, blocked.ts_ns))
    assert bar.x1 == pytest.approx(_x(lay, reverse.ts_ns))  # it never switched: reversed
    assert any(lb.text.startswith("sleeping on function klptrace_busy_work_func() · not "
                                  "switched at 1 try · held it 119 ms → reversed")
               for lb in lay.labels)
    # the report alone (no BPF verdict): from the start, for blocking_s
    sd = _sd(_with_stall(RUN, blocked=False), "busy-target-module")
    lay = tl.layout(_events(sd), _stall_of(sd))
    bar = next(b for b in lay.bars if b.cls == "blocked")
    assert (bar.x1 - bar.x0) * lay.ns_per_px == pytest.approx(0.11e9, rel=1e-3)
    assert any("in the stall report · not switched for 0.1 s" in lb.text for lb in lay.labels)


# ---- the page ----

class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(page)
    return p.tags


def test_page_is_self_contained_and_complete() -> None:
    page = render("html", results.load(RUN, "run"))
    tags = _tags(page)
    names = {t for t, _a in tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed"}
    assert not any(k in ("src", "srcset") or k.startswith("on") for _t, a in tags for k in a)
    assert set(re.findall(r"https?://[^\s\"')]+", page)) == {"http://www.w3.org/2000/svg"}
    sections = [a["id"] for t, a in tags if t == "section"]
    assert sections == IDS
    timelines = [a["id"] for t, a in tags if t == "div" and "timeline" in (a.get("class") or "")]
    assert timelines == [f"{i}-timeline" for i in IDS]
    ids = [a["id"] for _t, a in tags if "id" in a]
    assert len(ids) == len(set(ids))
    rows = re.findall(r'<tr><td class="num">\d+</td><td><a class="mono" href="#([^"]+)"', page)
    assert rows == IDS
    assert page.count('<span class="badge pass">✓ PASS</span>') == 2 * len(IDS)


def test_everything_from_the_recording_is_escaped() -> None:
    bad = '<script>alert(1)</script>"\'><blink onmouseover=x>'
    run = copy.deepcopy(RUN)
    run["kernel"] = bad
    sd = run["scenarios"][0]
    sd.update(id=bad, status="fail", explanation="line 2: " + bad, problems=[bad], notes=[bad],
              diff=["-" + bad, "+" + bad], oops=[bad], dmesg=[bad],
              expected=[bad], recorded=[bad])
    for e in sd["events"]:
        for k in ("comm", "detail", "object", "patch"):
            if k in e:
                e[k] = bad
    doc = results.load(run, "run")
    assert isinstance(doc, results.RunDocument)
    # a saved file cannot give such a start_time (from_json refuses it); a result can
    first = dataclasses.replace(doc.scenarios[0], start_time=bad)
    page = render("html", dataclasses.replace(doc, scenarios=[first, *doc.scenarios[1:]]))
    tags = _tags(page)
    assert not [t for t, _a in tags if t in ("script", "blink")]
    assert not any(k.startswith("on") for _t, a in tags for k in a)
    assert ("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&gt;&lt;blink onmouseover=x&gt;"
            in page)


def test_failing_recheck_marks_the_first_divergence(tmp_path: Path) -> None:
    page_file, doc_file = _failing(tmp_path)
    page, doc = page_file.read_text(), json.loads(doc_file.read_text())
    sd = _sd(doc, "module-going-notifier")
    n = int(re.match(r"line (\d+):", sd["explanation"])[1])  # type: ignore[index]
    section = page[page.index('id="module-going-notifier"'):]
    section = section[:section.index("</section>")]
    rows = re.findall(r'<tr class="diverge"><td class="n">▶ (\d+)</td><td>([^<]*)</td>', section)
    assert rows == [(str(n), html._e(sd["expected"][n - 1]))]
    assert "<details class=\"transcripts\" open>" in section
    assert f"first divergence (line {n})" in section  # on the timeline too
    assert '<pre class="diff">' in section and html._e(sd["diff"][0]) in section
    assert html._e(sd["explanation"]) in section
    assert '<span class="badge fail">✗ FAIL</span>' in section


def test_error_shows_its_problems_and_oops() -> None:
    run = copy.deepcopy(RUN)
    sd = _sd(run, "atomic-replace")
    sd.update(status="error", explanation="the recording cannot be trusted: 3 events were lost",
              problems=["3 events were lost (the BPF ring buffer was full)"],
              oops=["BUG: kernel NULL pointer dereference, address: 0000000000000008",
                    "RIP: 0010:klp_complete_transition+0x4f/0x230"])
    section = html.scenario(_result(sd))
    assert '<ul class="problems"><li>3 events were lost' in section
    assert "<pre class=\"oops\">BUG: kernel NULL pointer dereference" in section
    assert "RIP: 0010:klp_complete_transition+0x4f/0x230" in section


def test_stall_report_is_shown() -> None:
    sd = _sd(_with_stall(RUN), "busy-target-module")
    section = html.scenario(_result(sd))
    assert "<b>klptrace_lp: patching transition, in transition for 0.1 s, 1 try</b>" in section
    assert '<td class="mono">kworker/0:2:61</td><td>kernel thread</td>' in section
    assert "klptrace_busy_work_func+0x2a/0x50 [klptrace_busy]" in section
    assert html._e(sd["stall"]["next_steps"][0]) in section


def test_matrix_has_a_column_per_kernel() -> None:
    other = copy.deepcopy(RUN)
    other["kernel"] = "6.12.57+deb12-amd64"
    _sd(other, "atomic-replace")["status"] = "fail"
    page = render("html", results.load({"runs": [RUN, other]}, "matrix"))
    heads = re.findall(r'<th class="k">([^<]*)</th>', page)
    assert heads == [RUN["kernel"], other["kernel"]]
    ids = [a["id"] for _t, a in _tags(page) if "id" in a]
    assert len(ids) == len(set(ids))
    matrix = page[page.index('<table class="matrix'):]
    matrix = matrix[:matrix.index("</table>")]
    links = [a["href"] for t, a in _tags(matrix) if t == "a"]
    assert links == [f"#k{k}-{sid}" for sid in IDS for k in (0, 1)]
    assert set(h[1:] for h in links) <= set(ids)  # type: ignore[index]
    row = page[page.index('<td class="mono">atomic-replace</td>'):]
    assert row.index("✓ PASS") < row.index("✗ FAIL") < row.index("</tr>")


@pytest.mark.parametrize("name", ["busy-target-module", "state-taken-over-by-replace",
                                  "shadow-leak-reported"])
def test_readme_shows_the_screenshot(name: str) -> None:
    png = REPO / "docs" / f"{name}.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < 400_000
    assert f"docs/{name}.png" in (REPO / "README.md").read_text()
    assert f"docs/{name}.png" in (REPO / "Makefile").read_text()  # `make screenshot` draws it


# ---- in a real browser ----

_MEASURE = """
const out = [];
for (const svg of document.querySelectorAll('div.timeline > svg')) {
  const r = svg.getBoundingClientRect();
  const texts = [];
  for (const t of svg.querySelectorAll('text')) {
    const b = t.getBoundingClientRect(), s = getComputedStyle(t);
    const own = Array.from(t.childNodes).filter(n => n.nodeType === 3).map(n => n.data);
    texts.push({text: own.join(''), x: b.x, y: b.y, w: b.width, h: b.height,
                visible: s.visibility === 'visible' && s.display !== 'none'
                         && parseFloat(s.opacity) > 0});
  }
  out.push({id: svg.parentElement.id, x: r.x, y: r.y, w: r.width, h: r.height, texts});
}
return out;
"""


@pytest.fixture(scope="module")
def chromium() -> Any:
    why = browser.missing()
    if why:
        skip_or_fail(why)
    with browser.chromium() as d:
        yield d


def _documents(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    _page, checked = _failing(tmp_path)
    return [("saved run", RUN), ("with a stall", _with_stall(RUN)),
            ("failing re-check", json.loads(checked.read_text())),
            ("matrix", {"runs": [RUN, _with_stall(RUN)]})]


def test_report_in_chromium(chromium: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    for name, doc in _documents(tmp_path):
        page = tmp_path / "report.html"
        page.write_text(render("html", results.load(doc, name)))
        chromium.get(page.as_uri())
        runs = doc["runs"] if "runs" in doc else [doc]
        tables = chromium.find_elements(By.CSS_SELECTOR, "table.results:not(.matrix)")
        assert len(tables) == len(runs), name
        for table, run in zip(tables, runs, strict=True):
            assert table.is_displayed()
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            assert len(rows) == len(run["scenarios"])
            assert all(r.is_displayed() and r.size["height"] > 10 for r in rows)
        drawn = {d["id"]: d for d in chromium.execute_script(_MEASURE)}
        for k, run in enumerate(runs):
            prefix = f"k{k}-" if len(runs) > 1 else ""
            for sd in run["scenarios"]:
                where = f"{name}: {prefix}{sd['id']}"
                el = chromium.find_element(By.ID, f"{prefix}{sd['id']}-timeline")
                assert el.is_displayed(), where
                d = drawn[f"{prefix}{sd['id']}-timeline"]
                # the page's sections carry each verdict's first divergence
                div = results.ScenarioResult.from_json(sd, where).verdict.divergence
                lay = tl.layout(_events(sd), _stall_of(sd), flags=html._flags(div, _events(sd)))
                assert d["w"] > 800 and d["h"] == pytest.approx(
                    lay.height * d["w"] / lay.width, abs=1), where
                assert [t["text"] for t in d["texts"]] == [lb.text for lb in lay.labels], where
                _drawn_apart(d, lay, where)


def _drawn_apart(d: dict[str, Any], lay: tl.Layout, where: str) -> None:
    """Every label drawn, visible, inside its layout box (scaled), and none overlapping."""
    scale = d["w"] / lay.width
    boxes = []
    for t, lb in zip(d["texts"], lay.labels, strict=True):
        assert t["visible"] and t["w"] > 0 and t["h"] > 0, f"{where}: {t['text']!r} not drawn"
        x, y = t["x"] - d["x"], t["y"] - d["y"]
        b = lb.box
        assert b.x * scale - 1 <= x and x + t["w"] <= (b.x + b.w) * scale + 1, \
            f"{where}: {t['text']!r} drawn {t['w']:.1f} px wide, laid out {b.w * scale:.1f}"
        assert b.y * scale - 1.5 <= y and y + t["h"] <= (b.y + b.h) * scale + 1.5, \
            f"{where}: {t['text']!r} drawn {y:.1f}+{t['h']:.1f}, laid out {b.y}+{b.h}"
        boxes.append((t["text"], x, y, t["w"], t["h"]))
    for i, (n1, x1, y1, w1, h1) in enumerate(boxes):
        for n2, x2, y2, w2, h2 in boxes[i + 1:]:
            apart = x1 + w1 <= x2 + .5 or x2 + w2 <= x1 + .5 or y1 + h1 <= y2 + .5 \
                or y2 + h2 <= y1 + .5
            assert apart, f"{where}: {n1!r} and {n2!r} overlap as drawn"


def test_screenshot_of_one_scenario(chromium: Any, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render("html", results.load(RUN, "run")))
    out = tmp_path / "busy.png"
    browser.screenshot(page, "busy-target-module", out, driver=chromium)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 400
    assert len(data) < 300_000


def test_real_stall_is_drawn() -> None:
    """tests/data/run-busy-6.1.json, recorded by `klptrace run --vm --kernel 6.1
    busy-target-module` (the README's screenshot): the worker that held the transition
    is a blocked bar from its BPF record until the transition reversed, and the page
    carries the stall report."""
    run = json.loads((REPO / "tests" / "data" / "run-busy-6.1.json").read_text())
    sd = _sd(run, "busy-target-module")
    evs = _events(sd)
    blocked = [e for e in evs if e.kind == EventKind.TASK_BLOCKED]
    assert blocked and {e.object for e in blocked} == {"klptrace_busy_work_func"}  # its function
    lay = tl.layout(evs, _stall_of(sd))
    bar = next(b for b in lay.bars if b.cls == "blocked")
    reverse = next(e for e in evs if e.kind == EventKind.TRANSITION_REVERSE)
    assert bar.x0 == pytest.approx(_x(lay, blocked[0].ts_ns))
    assert bar.x1 == pytest.approx(_x(lay, reverse.ts_ns))
    section = html.scenario(_result(sd))
    assert "<h3>Stall report</h3>" in section and "klptrace_busy_work_func" in section
