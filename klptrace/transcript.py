"""Events as the lines the kernel selftests expect in dmesg.

test-callbacks.sh compares dmesg with lines such as
    livepatch: 'P': initializing patching transition
    P: pre_patch_callback: M -> [MODULE_STATE_LIVE] Normal state
so a recording rendered this way reads at once to anyone who knows them, and
expectations are written in the same words. Every line comes from a recorded
event; the kernel messages among them are worded as the kernel words them
(kernel/livepatch/core.c, transition.c).

State and shadow variable calls (issue 21) are lines of klptrace's own, in the same
spirit: "state get P id 42: version 1 (pre_patch)", "shadow alloc <obj#1> id 7 by M
(pre_patch)". An object is named by its first appearance in the recording (obj#1...),
since its address differs per boot. A klp_shadow_get() that found its variable is no
line: patched code calls it on hot paths, often in a loop, and a line per call would
drown the story (the recording's events keep every call). A get that found nothing is a
line, once until something else happens to that <obj, id>: it is where the caller takes
the "no shadow data" path, which is what an expectation needs to pin down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from klptrace import ledger
from klptrace.events import KLP_PATCHED, Callback, Event, EventKind, ShadowOp, StateOp


def _dir(state: int | None) -> str:
    return "patching" if state == KLP_PATCHED else "unpatching"


def insmod_error(module_file: str, err: int) -> str:
    """What insmod prints when the kernel refuses a module with errno err."""
    return f"insmod: ERROR: could not insert module {module_file}: {os.strerror(err)}"


def rmmod_error(module: str, err: int) -> str:
    """What rmmod prints when the kernel refuses an unload with errno err."""
    return f"rmmod: ERROR: could not remove module {module}: {os.strerror(err)}"


def callback_line(ev: Event) -> str:
    """"P: pre_patch_callback: vmlinux" or "P: ...: M -> [MODULE_STATE_...] ..."."""
    role = ev.callback.word if ev.callback else "?"
    head = f"{ev.patch}: {role}_callback: "
    if ev.object == "vmlinux":
        return head + "vmlinux"
    st = ev.module_state
    return head + f"{ev.object} -> {st.text if st is not None else '[?]'}"


def _role(ev: Event) -> str:
    """" (pre_patch)" inside a traced callback (" (pre_patch M)" of a module's klp_object)."""
    if ev.callback is None:
        return ""
    of = "" if ev.object in ("", "vmlinux") else f" {ev.object}"
    return f" ({ev.callback.word}{of})"


def state_line(ev: Event) -> str:
    """A STATE or STATE_DECLARED event's line."""
    found = "none" if ev.version is None else f"version {ev.version}"
    if ev.kind == EventKind.STATE_DECLARED:
        return f"state declare {ev.patch} id {ev.state_id}: {found}"
    caller = f" by {ev.caller}" if ev.caller and ev.caller != ev.patch else ""
    if ev.op == StateOp.GET_PREV:
        return f"state get_prev id {ev.state_id} for {ev.patch}{caller}: {found}{_role(ev)}"
    return f"state get {ev.patch} id {ev.state_id}{caller}: {found}{_role(ev)}"


def shadow_line(ev: Event, names: dict[int, str]) -> str:
    """A SHADOW event's line; names: the objects' (ledger.object_names())."""
    op = ev.op.value if ev.op is not None else "?"
    obj = "" if ev.op == ShadowOp.FREE_ALL or ev.obj is None else f" <{names[ev.obj]}>"
    null = (": NULL" if ev.addr is None and ev.op in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC,
                                                       ShadowOp.GET) else "")
    return f"shadow {op}{obj} id {ev.shadow_id} by {ledger.by(ev)}{null}"


class _Renderer:
    def __init__(self, events: list[Event]) -> None:
        self.names = ledger.object_names(events)
        # refusals are told only when the recorded states explain them (ledger.py)
        self.refused = ({(r.patch, r.ts_ns) for r in ledger.of(events).refusals}
                        if any(e.kind == EventKind.ENABLE_RET and e.ret == ledger.EINVAL
                               for e in events) else set())
        self.null_gets: dict[tuple[int, int], str] = {}  # the last get that found nothing
        self.lines: list[tuple[str, Event]] = []
        self.pending_enable: set[str] = set()
        self.coming: str | None = None  # module inside klp_module_coming()
        self.going: str | None = None  # module inside klp_module_going()
        self.applied: set[tuple[str, str]] = set()
        self.failed_patch = ""
        self.init_failed: set[str] = set()
        self.started: set[str] = set()  # patches whose transition start was recorded

    def out(self, line: str, ev: Event) -> None:
        self.lines.append((line, ev))

    def applying(self, ev: Event) -> None:
        """The kernel announces each patch it applies to a coming module."""
        if self.coming and ev.object == self.coming and (ev.patch, ev.object) not in self.applied:
            self.applied.add((ev.patch, ev.object))
            self.out(f"livepatch: applying patch '{ev.patch}' to loading module '{ev.object}'", ev)

    def feed(self, ev: Event) -> None:
        k, p = ev.kind, ev.patch
        if k == EventKind.STEP:
            self.out(f"% {ev.detail}", ev)
        elif k == EventKind.STEP_RESULT:
            self.out(ev.detail, ev)
        elif k == EventKind.ENABLE:
            self.pending_enable.add(p)
        elif k == EventKind.ENABLE_RET:
            self.pending_enable.discard(p)
            if (p, ev.ts_ns) in self.refused:
                self.out(ledger.kernel_words(p), ev)
        elif k in (EventKind.STATE, EventKind.STATE_DECLARED):
            self.out(state_line(ev), ev)
        elif k == EventKind.SHADOW:
            self.shadow(ev)
        elif k == EventKind.TRANSITION_INIT:
            if ev.state == KLP_PATCHED and p in self.pending_enable:
                self.pending_enable.discard(p)
                self.out(f"livepatch: enabling patch '{p}'", ev)
            self.out(f"livepatch: '{p}': initializing {_dir(ev.state)} transition", ev)
        elif k == EventKind.TRANSITION_START:
            self.started.add(p)
            self.out(f"livepatch: '{p}': starting {_dir(ev.state)} transition", ev)
        elif k == EventKind.TRANSITION_COMPLETE:
            self.out(f"livepatch: '{p}': completing {_dir(ev.state)} transition", ev)
        elif k == EventKind.TRANSITION_DONE:
            self.out(f"livepatch: '{p}': {_dir(ev.state)} complete", ev)
        elif k == EventKind.TRANSITION_CANCEL:
            self.out(f"livepatch: failed to enable patch '{p}'", ev)
            self.out(f"livepatch: '{p}': canceling patching transition, going to unpatch", ev)
        elif k == EventKind.TRANSITION_REVERSE:
            how = "patching to unpatching" if ev.state == KLP_PATCHED else "unpatching to patching"
            self.started.discard(p)
            self.out(f"livepatch: '{p}': reversing transition from {how}", ev)
        elif k == EventKind.TRANSITION_REVERSED:
            # klp_reverse_transition() ends with klp_start_transition(), which the
            # compiler may inline there (it does in Debian's 6.1): then the start
            # has no probe hit of its own, and the reversal's return stands for it.
            if p not in self.started:
                self.out(f"livepatch: '{p}': starting {_dir(ev.state)} transition", ev)
        elif k == EventKind.TRANSITION_FORCE:
            self.out("livepatch: forcing remaining tasks to the patched state", ev)
        elif k == EventKind.CALLBACK:
            self.applying(ev)
            self.out(callback_line(ev), ev)
            if ev.callback == Callback.PRE_PATCH and ev.ret:
                self.failed_patch = p
                self.out(f"livepatch: pre-patch callback failed for object '{ev.object}'", ev)
        elif k == EventKind.PATCH_OBJECT:
            self.applying(ev)
            if ev.ret:
                self.failed_patch = p
                if self.coming:
                    self.out(f"livepatch: failed to apply patch '{p}' to module "
                             f"'{ev.object}' ({ev.ret})", ev)
                else:
                    self.out(f"livepatch: failed to patch object '{ev.object}'", ev)
        elif k == EventKind.UNPATCH_OBJECT:
            if self.going or self.coming:
                self.out(f"livepatch: reverting patch '{p}' on unloading module '{ev.object}'", ev)
        elif k == EventKind.MODULE_COMING:
            self.coming, self.applied, self.failed_patch = ev.object, set(), ""
        elif k == EventKind.MODULE_COMING_RET:
            if ev.ret and self.failed_patch:
                m = ev.object
                self.out(f"livepatch: patch '{self.failed_patch}' failed for module '{m}', "
                         f"refusing to load module '{m}'", ev)
            self.coming = None
        elif k == EventKind.MODULE_GOING:
            # the module's exit has run (unless its init failed, when it never does)
            if not ev.livepatch and ev.object not in self.init_failed:
                self.out(f"{ev.object}: {ev.object}_exit", ev)
            self.init_failed.discard(ev.object)
            self.going = ev.object
        elif k == EventKind.MODULE_FREE:
            if self.going == ev.object:
                self.going = None
        elif k == EventKind.MODULE_INIT:
            self.going = None
        elif k == EventKind.MODULE_INIT_RET:
            if ev.ret:
                self.init_failed.add(ev.object)
            elif not ev.livepatch:
                self.out(f"{ev.object}: {ev.object}_init", ev)


    def shadow(self, ev: Event) -> None:
        """A SHADOW line, but a get that found something none, and a get that found
        nothing only once until another call on its <obj, id> (the module's docstring)."""
        line = shadow_line(ev, self.names)
        sid = ev.shadow_id or 0
        if ev.op == ShadowOp.FREE_ALL:
            for key in [k for k in self.null_gets if k[1] == sid]:
                del self.null_gets[key]
            self.out(line, ev)
            return
        key = (ev.obj or 0, sid)
        if ev.op != ShadowOp.GET:
            self.null_gets.pop(key, None)
        elif ev.addr is not None or self.null_gets.get(key) == line:
            return
        else:
            self.null_gets[key] = line
        self.out(line, ev)


def render_pairs(events: Iterable[Event]) -> list[tuple[str, Event]]:
    """Each transcript line with the event it came from."""
    events = list(events)
    r = _Renderer(events)
    for ev in events:
        r.feed(ev)
    return r.lines


def render(events: Iterable[Event]) -> list[str]:
    """The transcript lines of a sequence of events."""
    return [line for line, _ev in render_pairs(events)]


def parse_expectation(text: str) -> list[str]:
    """Expected transcript lines from text: blank lines and # comments dropped."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


# transcript lines that the kernel itself logs (klptrace's own "% step" lines
# are written to the log for people to read, but prove nothing about the kernel)
_WITNESSED = re.compile(
    r"^(livepatch: (?!klp_try_switch_task: |signaling remaining tasks).*"
    r"|\S+: (pre|post)_(un)?patch_callback: .*"
    r"|(?P<m>\S+): (?P=m)_(init|exit))$")


def witnessed(lines: Sequence[str]) -> list[str]:
    """The lines of a transcript (or of dmesg) that both BPF and dmesg can show."""
    return [line for line in lines if _WITNESSED.match(line)]
