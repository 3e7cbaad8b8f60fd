"""The vocabulary: Python and the BPF header agree, and events round-trip JSON."""

import re

from util import REPO

from klptrace.events import Callback, Event, EventKind, ModuleState


def _header_defines() -> dict[str, int]:
    text = (REPO / "bpf" / "klptrace.h").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define KLPT_(\w+)\s+(\d+)", text)}


def test_header_kinds_match_python() -> None:
    defs = _header_defines()
    bpf_kinds = [k for k in EventKind if k < 100]  # 100+ are written by klptrace itself
    for kind in bpf_kinds:
        assert defs[kind.name] == kind.value, kind
    for cb in Callback:
        assert defs[f"CB_{cb.name}"] == cb.value, cb


def test_event_json_round_trip() -> None:
    ev = Event(EventKind.CALLBACK, 12, pid=3, tid=4, comm="insmod", patch="p", object="m",
               callback=Callback.PRE_PATCH, state=ModuleState.COMING, ret=-19)
    d = ev.to_json()
    assert d["callback"] == "pre_patch" and d["module_state"] == "COMING" and d["ret"] == -19
    assert Event.from_json(d) == ev


def test_module_state_text_is_the_selftests_wording() -> None:
    assert ModuleState.GOING.text == "[MODULE_STATE_GOING] Going away"
