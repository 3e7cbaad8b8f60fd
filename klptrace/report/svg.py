"""A timeline's Layout (report/timeline.py) drawn as inline SVG, and its legend.

Colours are Okabe-Ito's, which read for the common kinds of colour
blindness, and never stand alone: every mark has a shape and a label, every
bar a pattern and a label. CSS styles the shapes by class (the layout's
names); DEFS holds the patterns every timeline of a page shares. Everything
drawn from a recording is escaped.

The lanes of states and shadow variables (report/klp_lanes.py) bring their own styles
(KLP_CSS, an SVG <style> in each timeline that has them, and in the legend of a page
that has them), so a page without any is written as it was before them.
"""

from __future__ import annotations

from html import escape

from klptrace.report import timeline as tl
from klptrace.report.markup import clean

# Okabe-Ito
BLUE, SKY, GREEN, ORANGE, VERMILLION, PURPLE, YELLOW = (
    "#0072B2", "#56B4E9", "#009E73", "#E69F00", "#D55E00", "#CC79A7", "#F0E442")

#: SVG styles: shapes, bars and labels by class (the layout's names)
CSS = f"""
.tl text {{ font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: {tl.FONT_PX}px;
  fill: #1b1f24; paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }}
.tl text.lane {{ fill: #1b1f24; }} .tl text.group {{ font-weight: 700; stroke: #eef1f5; }}
.tl text.axis, .tl text.axis-title {{ fill: #5b6470; }}
.tl text.fail {{ fill: #a84300; font-weight: 700; }}
.tl text.blocked {{ fill: #a84300; }}
.tl .grid {{ stroke: #e6e9ed; stroke-width: 1; }}
.tl .guide {{ stroke: #8a929c; stroke-width: 1; stroke-dasharray: 3 3; }}
.tl .axis-line {{ stroke: #8a929c; }}
.tl .lane-bg {{ fill: #f6f8fa; }} .tl .group-bg {{ fill: #eef1f5; }}
.tl .m {{ stroke: #1b1f24; stroke-width: 1; }}
.tl .m.pre_patch {{ fill: {BLUE}; }} .tl .m.post_patch {{ fill: {SKY}; }}
.tl .m.pre_unpatch {{ fill: {ORANGE}; }} .tl .m.post_unpatch {{ fill: {PURPLE}; }}
.tl .m.fail {{ fill: {VERMILLION}; }} .tl .m.step {{ fill: #1b1f24; }}
.tl .m.object {{ fill: #fff; }} .tl .m.module {{ fill: {GREEN}; }}
.tl .m.signal {{ fill: {YELLOW}; }} .tl .m.blocked {{ fill: url(#klpt-blocked); }}
.tl .m.patching, .tl .bar.patching {{ fill: {BLUE}; }}
.tl .m.unpatching, .tl .bar.unpatching {{ fill: url(#klpt-unpatching); }}
.tl .m.cancelled, .tl .bar.cancelled {{ fill: url(#klpt-cancelled); }}
.tl .bar {{ stroke: #1b1f24; stroke-width: 1; }}
.tl .bar.mod-live {{ fill: #9aa5b1; }}
.tl .bar.mod-coming, .tl .bar.mod-going {{ fill: url(#klpt-module-edge); }}
.tl .bar.blocked {{ fill: url(#klpt-blocked); }}
.tl .tick.try {{ stroke: #1b1f24; stroke-width: 2; }}
.tl .tick.init {{ stroke: #1b1f24; stroke-width: 1.5; }}
.tl .tick.task {{ stroke: #a84300; stroke-width: 1.5; }}
.tl .open {{ fill: #1b1f24; }}
"""

#: the styles of the states' and shadow variables' lanes: a held state is green, a
#: shadow variable sky blue, a leaked one pale vermillion with a dashed edge (and its
#: label, "leaked", and an arrow to the end)
KLP_CSS = f"""
.tl .bar.state-held {{ fill: {GREEN}; fill-opacity: .55; }}
.tl .bar.shadow {{ fill: {SKY}; fill-opacity: .6; }}
.tl .bar.leaked {{ fill: #f7d9c5; stroke: {VERMILLION}; stroke-width: 2;
  stroke-dasharray: 4 2; }}
.tl .m.state {{ fill: {GREEN}; }} .tl .m.state-none {{ fill: #fff; }}
.tl .m.shadow {{ fill: {SKY}; stroke-width: 2.5; stroke: #1b1f24; }}
"""
#: the lane kinds that need KLP_CSS
KLP_KINDS = ("state", "shadow")

# Patterns shared by every timeline: unpatching is striped, a cancelled
# transition cross-hatched, a module's COMING and GOING light-striped, a
# blocked task striped in vermillion: each reads without its colour.
DEFS = f"""<svg width="0" height="0" style="position:absolute" aria-hidden="true"
 focusable="false"><defs>
<pattern id="klpt-unpatching" width="6" height="6" patternUnits="userSpaceOnUse"
 patternTransform="rotate(45)"><rect width="6" height="6" fill="{ORANGE}"/>
<rect width="2.2" height="6" fill="#fff" fill-opacity=".75"/></pattern>
<pattern id="klpt-cancelled" width="6" height="6" patternUnits="userSpaceOnUse">
<rect width="6" height="6" fill="#b9bfc6"/><path d="M0 0L6 6M6 0L0 6" stroke="#1b1f24"
 stroke-width=".9"/></pattern>
<pattern id="klpt-module-edge" width="5" height="5" patternUnits="userSpaceOnUse"
 patternTransform="rotate(-45)"><rect width="5" height="5" fill="#dfe4e9"/>
<rect width="1.6" height="5" fill="#9aa5b1"/></pattern>
<pattern id="klpt-blocked" width="6" height="6" patternUnits="userSpaceOnUse"
 patternTransform="rotate(-45)"><rect width="6" height="6" fill="#f7d9c5"/>
<rect width="2.4" height="6" fill="{VERMILLION}"/></pattern>
</defs></svg>"""


def esc(text: object) -> str:
    """Text from a recording, made safe for HTML and SVG."""
    return escape(clean(str(text)), quote=True)


def _shape(m: tl.Mark) -> str:
    x, y, r = m.x, m.y, tl.MARK_R
    cls = f'class="m {esc(m.cls)}"'
    s = m.shape
    if s == "pre_patch":
        d = f"M{x:.1f} {y - r:.1f}L{x + r:.1f} {y + r * .8:.1f}L{x - r:.1f} {y + r * .8:.1f}Z"
    elif s == "pre_unpatch":
        d = f"M{x:.1f} {y + r:.1f}L{x + r:.1f} {y - r * .8:.1f}L{x - r:.1f} {y - r * .8:.1f}Z"
    elif s == "post_unpatch":
        d = f"M{x:.1f} {y - r:.1f}L{x + r:.1f} {y:.1f}L{x:.1f} {y + r:.1f}L{x - r:.1f} {y:.1f}Z"
    elif s == "coming":
        d = f"M{x - r * .8:.1f} {y - r:.1f}L{x + r:.1f} {y:.1f}L{x - r * .8:.1f} {y + r:.1f}Z"
    elif s == "going":
        d = f"M{x + r * .8:.1f} {y - r:.1f}L{x - r:.1f} {y:.1f}L{x + r * .8:.1f} {y + r:.1f}Z"
    elif s == "post_patch":
        return f'<circle {cls} cx="{x:.1f}" cy="{y:.1f}" r="{r * .9:.1f}"/>'
    elif s in ("object", "step", "task"):
        k = r * (.7 if s != "task" else .9)
        return (f'<rect {cls} x="{x - k:.1f}" y="{y - k:.1f}" width="{2 * k:.1f}" '
                f'height="{2 * k:.1f}"/>')
    elif s == "swatch":
        return (f'<rect {cls} x="{x - r:.1f}" y="{y - r * .7:.1f}" width="{2 * r:.1f}" '
                f'height="{1.4 * r:.1f}" stroke="#1b1f24" stroke-width="1"/>')
    elif s == "declare":  # a flag: a patch declaring its state
        d = (f"M{x - r * .8:.1f} {y - r:.1f}H{x + r:.1f}L{x + r * .3:.1f} {y - r * .3:.1f}"
             f"L{x + r:.1f} {y + r * .4:.1f}H{x - r * .3:.1f}V{y + r:.1f}H{x - r * .8:.1f}Z")
    elif s == "get":  # a ring: a state looked up
        return (f'<circle {cls} cx="{x:.1f}" cy="{y:.1f}" r="{r * .6:.1f}" '
                'stroke-width="2"/>')
    elif s in ("alloc", "free"):  # a plus, a minus: a shadow variable allocated, freed
        k = r * .85
        plus = f"M{x:.1f} {y - k:.1f}V{y + k:.1f}" if s == "alloc" else ""
        return f'<path {cls} d="M{x - k:.1f} {y:.1f}H{x + k:.1f}{plus}"/>'
    elif s == "signal":
        d = (f"M{x + r * .3:.1f} {y - r:.1f}L{x - r * .6:.1f} {y + r * .15:.1f}L{x:.1f} "
             f"{y + r * .15:.1f}L{x - r * .3:.1f} {y + r:.1f}L{x + r * .6:.1f} {y - r * .15:.1f}"
             f"L{x:.1f} {y - r * .15:.1f}Z")
    else:  # fail, forced: a cross
        k = r * .75
        return (f'<path {cls} d="M{x - k:.1f} {y - k:.1f}L{x + k:.1f} {y + k:.1f}M{x + k:.1f} '
                f'{y - k:.1f}L{x - k:.1f} {y + k:.1f}" stroke="{VERMILLION}" stroke-width="3"/>')
    extra = ""
    if m.cls == "fail" and s in ("pre_patch", "pre_unpatch", "post_patch", "post_unpatch"):
        extra = (f'<path d="M{x - 2.5:.1f} {y - 1:.1f}L{x + 2.5:.1f} {y + 4:.1f}M{x + 2.5:.1f} '
                 f'{y - 1:.1f}L{x - 2.5:.1f} {y + 4:.1f}" stroke="#fff" stroke-width="1.5"/>')
    return f'<path {cls} d="{d}"/>{extra}'


def svg(lay: tl.Layout, title: str) -> str:
    """A Layout as an inline SVG element."""
    w, h = lay.width, lay.height
    out = [f'<svg class="tl" xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" '
           f'height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" role="img">',
           f"<title>{esc(title)}</title>"]
    if any(lane.kind in KLP_KINDS for lane in lay.lanes):
        out.append(f"<style>{KLP_CSS}</style>")
    for group, gy in lay.groups:
        out.append(f'<rect class="group-bg" x="0" y="{gy:.1f}" width="{w:.0f}" '
                   f'height="{tl.GROUP_H}"><title>{esc(group)}</title></rect>')
    for i, lane in enumerate(lay.lanes):
        if i % 2:
            out.append(f'<rect class="lane-bg" x="0" y="{lane.y:.1f}" width="{w:.0f}" '
                       f'height="{lane.h:.1f}"/>')
    for gx in lay.grid:
        out.append(f'<line class="grid" x1="{gx:.1f}" x2="{gx:.1f}" y1="{lay.plot_y0:.1f}" '
                   f'y2="{h - 6:.1f}"/>')
    out.append(f'<line class="axis-line" x1="{lay.plot_x0:.1f}" x2="{lay.plot_x1:.1f}" '
               f'y1="{lay.plot_y0 - .5:.1f}" y2="{lay.plot_y0 - .5:.1f}"/>')
    for gx in lay.grid:
        out.append(f'<line class="axis-line" x1="{gx:.1f}" x2="{gx:.1f}" '
                   f'y1="{lay.plot_y0 - 5:.1f}" y2="{lay.plot_y0:.1f}"/>')
    for gx in lay.guides:
        out.append(f'<line class="guide" x1="{gx:.1f}" x2="{gx:.1f}" y1="{lay.plot_y0:.1f}" '
                   f'y2="{h - 6:.1f}"/>')
    for b in lay.bars:
        out.append(f'<rect class="bar {esc(b.cls)}" x="{b.x0:.1f}" y="{b.y:.1f}" '
                   f'width="{b.x1 - b.x0:.1f}" height="{b.h:.1f}"><title>{esc(b.title)}'
                   f"</title></rect>")
        if b.open_end:  # still going when the recording ended: an arrow head
            my = b.y + b.h / 2
            out.append(f'<path class="open" d="M{b.x1:.1f} {b.y - 2:.1f}L{b.x1 + 6:.1f} '
                       f'{my:.1f}L{b.x1:.1f} {b.y + b.h + 2:.1f}Z"/>')
    for t in lay.ticks:
        out.append(f'<line class="tick {esc(t.cls)}" x1="{t.x:.1f}" x2="{t.x:.1f}" '
                   f'y1="{t.y0:.1f}" y2="{t.y1:.1f}"><title>{esc(t.title)}</title></line>')
    for m in lay.marks:
        out.append(f"<g><title>{esc(m.title)}</title>{_shape(m)}</g>")
    for lb in lay.labels:
        tip = f"<title>{esc(lb.title)}</title>" if lb.title and lb.title != lb.text else ""
        out.append(f'<text class="{esc(lb.cls)}" x="{lb.x:.1f}" y="{lb.y:.1f}">{tip}'
                   f"{esc(lb.text)}</text>")
    out.append("</svg>")
    return "\n".join(out)


_LEGEND = [  # (shape, class, text)
    ("swatch", "patching", "patching transition"),
    ("swatch", "unpatching", "unpatching transition"),
    ("swatch", "cancelled", "cancelled"),
    ("try", "try", "a try (klp_try_complete_transition)"),
    ("pre_patch", "pre_patch", "pre_patch"), ("post_patch", "post_patch", "post_patch"),
    ("pre_unpatch", "pre_unpatch", "pre_unpatch"), ("post_unpatch", "post_unpatch", "post_unpatch"),
    ("object", "object", "klp_(un)patch_object"),
    ("coming", "module", "module_coming"), ("going", "module", "module_going"),
    ("band", "mod-live", "module LIVE"), ("band", "mod-coming", "COMING / GOING"),
    ("step", "step", "a step"), ("fail", "fail", "an error"),
    ("task", "blocked", "a task not switched"),
]
_KLP_LEGEND = [
    ("band", "state-held", "a patch holds a state"), ("declare", "state", "state declared"),
    ("get", "state", "klp_get_(prev_)state"), ("get", "state-none", "found none"),
    ("band", "shadow", "a shadow variable"), ("alloc", "shadow", "klp_shadow_alloc"),
    ("free", "shadow", "klp_shadow_free"), ("band", "leaked", "leaked"),
]


def legend(klp: bool = False) -> str:
    """What the shapes, patterns and ticks stand for, as one SVG; klp: also those of the
    states' and shadow variables' lanes."""
    x, y, parts = 8.0, 14.0, [f"<style>{KLP_CSS}</style>"] if klp else []
    width = float(tl.WIDTH)
    for shape, cls, text in _LEGEND + (_KLP_LEGEND if klp else []):
        need = 24 + tl.text_width(text) + 18
        if x + need > width:
            x, y = 8.0, y + 20
        cx = x + 7
        if shape == "try":
            parts.append(f'<rect class="bar patching" x="{x:.1f}" y="{y - 5:.1f}" width="16" '
                         f'height="10"/><line class="tick try" x1="{x + 8:.1f}" x2="{x + 8:.1f}" '
                         f'y1="{y - 7:.1f}" y2="{y + 7:.1f}"/>')
        elif shape == "band":
            parts.append(f'<rect class="bar {cls}" x="{x:.1f}" y="{y - 5:.1f}" width="16" '
                         f'height="10"/>')
        else:
            parts.append(_shape(tl.Mark(shape, cx, y, cls, text)))
        parts.append(f'<text x="{x + 22:.1f}" y="{y + 4:.1f}">{esc(text)}</text>')
        x += need
    h = y + 12
    return (f'<svg class="tl legend" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{h:.0f}" viewBox="0 0 {width:.0f} {h:.0f}" role="img">'
            f"<title>legend</title>{''.join(parts)}</svg>")
