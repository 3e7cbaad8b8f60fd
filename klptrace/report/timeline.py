"""One scenario's recorded events laid out as a timeline, in pixels: lanes, bars, marks, labels.

Pure layout, no verdicts: time maps linearly to x on one axis that every lane
shares. Lanes are grouped: the steps; the modules (loaded from module_coming to
free_module, their COMING, LIVE and GOING states); per livepatch its
transitions (a bar from klp_init_transition to the end of klp_complete_transition,
split where it was reversed or cancelled, a tick per klp_try_complete_transition)
and a lane per klp_object with its callbacks; the tasks that did not switch; and the
livepatch states and shadow variables, when there are some.
What each lane holds, in time, is report/lanes.py's (from story.py) and
report/klp_lanes.py's (from ledger.py).
Every mark carries a label whose box is computed from its text (a monospace
font of known advance); marks with their labels are packed into rows so that
no two boxes overlap (Layout.boxes, checked by the tests). report/svg.py
draws a Layout.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Sequence

from klptrace.events import Event
from klptrace.ledger import ShadowLeak
from klptrace.report.klp_lanes import klp_lanes
from klptrace.report.lanes import lanes_of
from klptrace.stall_report import StallReport

WIDTH = 1120  # px, the whole SVG (drawn at up to this width, scaled down to fit)
GUTTER = 200  # px left of the plot, for the lane names
RIGHT = 12  # px right of the plot
AXIS_H = 30  # px, the time axis at the top
GROUP_H = 20  # px, a group's title strip
ROW_H = 17  # px, one row of marks with their labels
BAND_H = 16  # px, the row of a lane's bars
LANE_PAD = 3  # px above and below a lane's rows
FONT_PX = 11  # the labels' font size (monospace)
# DejaVu Sans Mono, Menlo and Consolas advance 0.60-0.62 em per character;
# a label's box is computed with the widest, so the text never spills over it
CHAR_W = 0.625 * FONT_PX
ASCENT, DESCENT = 0.93 * FONT_PX, 0.25 * FONT_PX  # DejaVu's, the tallest of them
MARK_R = 5.0  # px, half a mark's size
GAP = 8.0  # px kept free between two labels in a row
NAME_X, LANE_NAME_X = 8.0, 20.0  # where group titles and lane names start


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in SVG pixels."""

    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box) -> bool:
        """Whether the two rectangles share any area."""
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


@dataclasses.dataclass(frozen=True)
class Label:
    """Text drawn from x (its start) on baseline y, inside box."""

    text: str
    x: float
    y: float
    box: Box
    cls: str
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Mark:
    """A shape centred on (x, y): its kind says which (see SHAPES)."""

    shape: str
    x: float
    y: float
    cls: str
    title: str

    @property
    def box(self) -> Box:
        """The square the shape is drawn in."""
        return Box(self.x - MARK_R, self.y - MARK_R, 2 * MARK_R, 2 * MARK_R)


@dataclasses.dataclass(frozen=True)
class Bar:
    """A span of time on a lane's band; open_end: still going when the recording ended."""

    x0: float
    x1: float
    y: float
    h: float
    cls: str
    title: str
    open_end: bool = False


@dataclasses.dataclass(frozen=True)
class Tick:
    """A short vertical line at x, e.g. one try of a transition."""

    x: float
    y0: float
    y1: float
    cls: str
    title: str


@dataclasses.dataclass(frozen=True)
class Lane:
    """A horizontal strip of the plot, y to y + h."""

    group: str
    name: str
    y: float
    h: float
    kind: str


@dataclasses.dataclass
class Layout:
    """Everything to draw, in pixels; t0_ns is x = plot_x0."""

    width: float
    height: float
    plot_x0: float
    plot_x1: float
    plot_y0: float
    t0_ns: int
    ns_per_px: float
    lanes: list[Lane] = dataclasses.field(default_factory=list)
    groups: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # (title, y)
    bars: list[Bar] = dataclasses.field(default_factory=list)
    ticks: list[Tick] = dataclasses.field(default_factory=list)
    marks: list[Mark] = dataclasses.field(default_factory=list)
    labels: list[Label] = dataclasses.field(default_factory=list)
    grid: list[float] = dataclasses.field(default_factory=list)  # x of the axis' ticks
    guides: list[float] = dataclasses.field(default_factory=list)  # x of each step

    def boxes(self) -> list[tuple[str, Box]]:
        """Every label's and mark's box, named: what must not overlap."""
        out = [(f"label {lb.text!r}", lb.box) for lb in self.labels]
        out += [(f"mark {m.shape} at {m.x:.0f},{m.y:.0f}", m.box) for m in self.marks]
        return out


#: mark shapes and what they stand for (the legend draws them)
SHAPES = {
    "pre_patch": "pre_patch callback",
    "post_patch": "post_patch callback",
    "pre_unpatch": "pre_unpatch callback",
    "post_unpatch": "post_unpatch callback",
    "object": "klp_patch_object / klp_unpatch_object",
    "step": "a step of the scenario",
    "coming": "module_coming",
    "going": "module_going",
    "fail": "an error returned",
    "forced": "transition forced",
    "signal": "fake signals sent",
    "task": "a task not switched at a try",
    "swatch": "a transition's direction",
}


def text_width(text: str) -> float:
    """Pixels the text takes in the labels' monospace font (wide characters count twice)."""
    n = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n * CHAR_W


# ---- pixels ----

def _nice_step(span_ns: float, max_ticks: int) -> int:
    """1, 2 or 5 times a power of ten, in ns, giving at most max_ticks ticks."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if span_ns / (m * step) <= max_ticks:
                return m * step
        step *= 10


def _time_text(ns: int, step: int) -> str:
    if step >= 1_000_000_000:
        return f"{ns / 1e9:g} s"
    if step >= 100_000_000:
        return f"{ns / 1e9:.1f} s"
    if step >= 1_000_000:
        return f"{ns / 1e6:g} ms"
    return f"{ns / 1e6:.3f} ms"


def _label(text: str, x: float, baseline: float, cls: str, title: str = "") -> Label:
    w = text_width(text)
    return Label(text, x, baseline, Box(x, baseline - ASCENT, w, ASCENT + DESCENT), cls, title)


def _fit(text: str, width: float) -> str:
    """The text, cut with an ellipsis to fit width pixels."""
    if text_width(text) <= width:
        return text
    while text and text_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


def pack(spans: Sequence[tuple[float, float]], gap: float = GAP) -> list[int]:
    """Rows for horizontal spans (x0, x1), first fit in the order given (time): no two
    spans in a row come closer than gap."""
    rows: list[list[tuple[float, float]]] = []
    out = [0] * len(spans)
    for i, (x0, x1) in enumerate(spans):
        for r, row in enumerate(rows):
            if all(x1 + gap <= a or b + gap <= x0 for a, b in row):
                row.append((x0, x1))
                out[i] = r
                break
        else:
            rows.append([(x0, x1)])
            out[i] = len(rows) - 1
    return out


def layout(events: Sequence[Event], stall: StallReport | None = None,
           width: float = WIDTH, flags: Sequence[tuple[int, str]] = (),
           leaks: Sequence[ShadowLeak] | None = None) -> Layout:
    """The timeline of one scenario's events (and its stall report, flags on the steps'
    lane, and the verdict's shadow leaks: None for the ledger's own), in pixels."""
    specs = lanes_of(events, stall, flags) + klp_lanes(events, leaks)
    t0 = events[0].ts_ns if events else 0
    t1 = max([events[-1].ts_ns if events else 0] + [s.t1 for sp in specs for s in sp.spans])
    x0, x1 = float(GUTTER), width - RIGHT
    span = max(t1 - t0, 1_000_000)  # at least 1 ms, so that one event still has an axis
    lay = Layout(width, 0.0, x0, x1, AXIS_H, t0, span / (x1 - x0))

    def x(ts: int) -> float:
        return x0 + (ts - t0) / lay.ns_per_px

    step = _nice_step(span, int((x1 - x0) // 90))
    for k in range(0, span + 1, step):
        gx = x(t0 + k)
        lay.grid.append(gx)
        text = _time_text(k, step)
        lab = _label(text, gx - text_width(text) / 2, AXIS_H - 10, "axis")
        if lab.box.x + lab.box.w <= width:
            lay.labels.append(lab)
    lay.labels.append(_label("time from the first event", NAME_X, AXIS_H - 10, "axis-title"))

    y = float(AXIS_H)
    group = None
    name_w = GUTTER - LANE_NAME_X - GAP
    for spec in specs:
        if spec.group != group:
            group = spec.group
            lay.groups.append((group, y))
            lay.labels.append(_label(_fit(group, width - NAME_X - GAP), NAME_X, y + 14,
                                     "group", group))
            y += GROUP_H
        top = y + LANE_PAD
        band = BAND_H if spec.has_band else 0
        # each item: its mark at x, its label to the right, or to the left near the edge
        # (the side with more room, the text cut to fit it when neither has enough)
        boxes, texts = [], []
        for it in spec.items:
            mx = x(it.ts)
            right, left = width - 2 - (mx + MARK_R + 3), (mx - MARK_R - 3) - x0
            side_right = text_width(it.text) <= right or right >= left
            text = _fit(it.text, right if side_right else left)
            w = text_width(text)
            texts.append(text)
            if side_right:
                boxes.append((mx - MARK_R, mx + MARK_R + 3 + w, mx + MARK_R + 3))
            else:
                boxes.append((mx - MARK_R - 3 - w, mx + MARK_R, mx - MARK_R - 3 - w))
        rows = pack([(a, b) for a, b, _ in boxes])
        nrows = max(rows) + 1 if rows else 0
        h = LANE_PAD * 2 + band + nrows * ROW_H
        lay.lanes.append(Lane(spec.group, spec.name, y, h, spec.kind))
        first_row_mid = top + (band / 2 if band else ROW_H / 2)
        lay.labels.append(_label(_fit(spec.name, name_w), LANE_NAME_X,
                                 first_row_mid + FONT_PX * 0.35, "lane", spec.name))
        by = top + 2
        for s in spec.spans:
            lay.bars.append(Bar(x(s.t0), max(x(s.t1), x(s.t0) + 2), by, band - 4, s.cls,
                                s.title, s.open_end))
        for ts, cls, title in spec.ticks:
            lay.ticks.append(Tick(x(ts), by - 2, by + band - 2, cls, title))
        for it, text, (_a, _b, tx), r in zip(spec.items, texts, boxes, rows, strict=True):
            cy = top + band + r * ROW_H + ROW_H / 2
            lay.marks.append(Mark(it.shape, x(it.ts), cy, it.cls, it.title))
            lay.labels.append(_label(text, tx, cy + FONT_PX * 0.35, it.cls, it.title))
        y += h
    lay.height = y + 6
    steps = next((s for s in specs if s.kind == "steps"), None)
    lay.guides = [x(it.ts) for it in steps.items if it.shape == "step"] if steps else []
    return lay


def overlaps(lay: Layout) -> list[str]:
    """Pairs of boxes that overlap (none, in a good layout), and boxes off the picture."""
    found = []
    named = lay.boxes()
    for i, (n1, b1) in enumerate(named):
        if b1.x < 0 or b1.y < 0 or b1.x + b1.w > lay.width or b1.y + b1.h > lay.height:
            found.append(f"{n1} leaves the picture")
        for n2, b2 in named[i + 1:]:
            if b1.overlaps(b2):
                found.append(f"{n1} overlaps {n2}")
    return found
