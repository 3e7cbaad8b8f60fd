"""The HTML report's lanes of states and shadow variables (report/klp_lanes.py): each
state's holder over time, each shadow variable from alloc to free, leaks drawn to the end
and labelled, problems marked; laid out without overlaps, on a page that stays valid
whatever a module is named; and a page without them written as before."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import shadowed as sh
from stalled import HOSTILE

from klptrace import ledger
from klptrace.report import html, klp_lanes, svg
from klptrace.report import timeline as tl
from klptrace.results import Matrix, ScenarioResult

SCALE = 100_000  # the builder's 10 ns apart, as 1 ms apart: room to draw each label


def _lanes(sc: ScenarioResult) -> dict[str, klp_lanes.LaneSpec]:
    specs = klp_lanes.klp_lanes(sc.recording.events, sc.verdict.shadow_leaks)
    return {s.name: s for s in specs}


def test_a_state_taken_over_by_a_replace_patch_and_its_variable_freed_by_it() -> None:
    sc = sh.result("kept", sh.kept(), scale=SCALE)
    lanes = _lanes(sc)
    assert list(lanes) == ["state 42", "<obj#1, 42>"]
    state = lanes["state 42"]
    assert state.group == "livepatch states"
    first, second = state.spans
    # lp holds it until lp2, cumulative, declares it; lp2 holds it until it is disabled
    assert first.title == f"{sh.LP} holds state 42 at version 1, until {sh.LP2} took it over"
    assert first.t1 == second.t0 and not first.open_end and not second.open_end
    assert second.title == f"{sh.LP2} holds state 42 at version 1"
    assert [it.text for it in state.items] == [
        f"{sh.LP} v1", f"{sh.LP2} v1", f"{sh.LP2}: get_prev → v1 (pre_patch)"]
    var = lanes["<obj#1, 42>"]
    (span,) = var.spans
    assert span.cls == "shadow" and not span.open_end
    assert [it.text for it in var.items] == [f"alloc by {sh.LP}", f"freed by {sh.LP2}"]
    assert f"freed by {sh.LP2}" in span.title


def test_a_leak_is_drawn_to_the_end_and_labelled() -> None:
    sc = sh.result("leaky", sh.leaky(), scale=SCALE)
    end = sc.recording.events[-1].ts_ns
    lanes = _lanes(sc)
    assert list(lanes) == ["<obj#1, 7>", "<obj#2, 7>"]
    for lane, obj in zip(lanes.values(), (sh.A, sh.B), strict=True):
        (span,) = lane.spans
        assert (span.cls, span.t1, span.open_end) == ("leaked", end, True)
        assert lane.items[-1].text == "leaked" and lane.items[-1].ts == end
        assert lane.items[-1].title.startswith(f"shadow leak: <{obj:#x}, 7> allocated by ")
    # the same events, the leak expected: still drawn as a leak (the verdict's)
    ok = sh.result("ok", sh.leaky(), (f"shadow leak: id 7 allocated by {sh.LP}",), SCALE)
    assert [s.cls for lane in _lanes(ok).values() for s in lane.spans] == ["leaked"] * 2


def test_a_problem_is_an_error_mark_on_its_variable() -> None:
    lane = _lanes(sh.result("misused", sh.misused(), scale=SCALE))["<obj#1, 7>"]
    assert [(it.text, it.cls) for it in lane.items] == [
        (f"alloc by {sh.LP}", "shadow"), (f"freed by {sh.LP}", "shadow"),
        ("free of nothing", "fail")]


def test_a_refused_patch_holds_nothing_and_its_refusal_is_marked() -> None:
    r = sh.Rec()
    r.enable(sh.LP2, {42: 2}, [])
    r.enable(sh.LP, {42: 1}, refused=True)
    lane = _lanes(sh.result("refused", r, scale=SCALE))["state 42"]
    assert [s.title for s in lane.spans] == [
        f"{sh.LP2} holds state 42 at version 2, to the end of the recording"]
    assert lane.items[-1].text == f"{sh.LP} refused (-EINVAL)" and lane.items[-1].cls == "fail"


def test_many_quiet_variables_are_counted_in_one_lane_but_a_leak_is_always_drawn() -> None:
    r = sh.Rec()
    r.load("klptrace_target")
    r.enable(sh.LP, {}, [])
    for i in range(40):
        r.shadow(sh.ShadowOp.ALLOC, "klptrace_target", 0x1000 * (i + 1), 7)
    r.shadow(sh.ShadowOp.ALLOC, sh.LP, 0x99000, 8)
    r.disable(sh.LP)
    r.unload(sh.LP)
    lanes = list(_lanes(sh.result("many", r, scale=SCALE)))
    assert len(lanes) == klp_lanes.MAX_VARIABLES + 1
    assert "<obj#41, 8>" in lanes and lanes[-1] == "17 more"


def test_the_lanes_are_laid_out_without_overlaps() -> None:
    for sc in (sh.result("kept", sh.kept(), scale=SCALE),
               sh.result("leaky", sh.leaky(), scale=SCALE),
               sh.result("hostile", sh.hostile(), scale=SCALE)):
        lay = tl.layout(sc.recording.events, leaks=sc.verdict.shadow_leaks)
        assert tl.overlaps(lay) == []
        assert {lane.kind for lane in lay.lanes} >= {"shadow"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        assert not any(k.startswith("on") for k, _v in attrs)

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def test_the_page_draws_them_escaped_with_their_legend() -> None:
    m = sh.matrix(sh.result("kept", sh.kept(), scale=SCALE),
                  sh.result("hostile", sh.hostile(), scale=SCALE))
    page = html.render(m)
    p = _Tags()
    p.feed(page)
    assert "script" not in p.tags and "<b a=" not in page and "<b a=" in HOSTILE
    # the styles: once per timeline that has such lanes, and once in the legend
    assert page.count(svg.KLP_CSS) == 3 and "klp_shadow_alloc" in page
    # the leak, with its address, above the hostile scenario's timeline
    assert f"shadow leak: &lt;{sh.A:#x}, 7&gt; allocated by lp" in page
    assert "leaked" in p.texts and "]]&gt;&lt;/system-out&gt;" in page
    assert "\x00" not in page and "\x1b" not in page
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))


def test_a_page_without_them_has_neither_their_styles_nor_their_legend() -> None:
    r = sh.Rec()
    r.enable(sh.LP, {}, [])
    page = html.render(Matrix.of(sh.doc(sh.result("plain", r, scale=SCALE))))
    assert svg.KLP_CSS not in page and "klp_shadow_alloc" not in page
    assert page.count("<svg") == 3  # the patterns, the legend, the timeline


def test_holders_are_the_ledgers_states_in_time() -> None:
    r = sh.kept()
    hs = klp_lanes.holders(ledger.of(r.events), r.events[-1].ts_ns)
    assert [(h.patch, h.version, h.successor) for h in hs] == [(sh.LP, 1, sh.LP2),
                                                                (sh.LP2, 1, "")]
