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


def test_every_header_kind_is_python_s() -> None:
    # the other direction: no kind the BPF side can send is unknown to Python
    defs = _header_defines()
    roles = {f"CB_{c.name}" for c in Callback}
    kinds = {name for name in defs if name not in roles and name not in
             ("NAME_LEN", "COMM_LEN", "F_LIVEPATCH")}
    assert kinds == {k.name for k in EventKind if k < 100}
    assert {name for name in defs if name.startswith("CB_")} == roles


# struct klpt_event's fields as bpf/klptrace.h declares them
_C_TYPES = {"__u64": "Q", "__u32": "I", "__s32": "i"}


def _header_layout() -> list[tuple[str, str]]:
    """(field, struct format) of struct klpt_event, in the header's order."""
    text = (REPO / "bpf" / "klptrace.h").read_text()
    body = re.search(r"struct klpt_event \{(.*?)\};", text, re.DOTALL)
    assert body
    lens = {m[1]: int(m[2]) for m in re.finditer(r"#define (KLPT_\w+_LEN)\s+(\d+)", text)}
    out = []
    for m in re.finditer(r"^\s*(__[us]\d+|char)\s+(\w+)(?:\[(\w+)\])?;", body[1], re.MULTILINE):
        ctype, name, size = m[1], m[2], m[3]
        out.append((name, f"{lens[size]}s" if ctype == "char" else _C_TYPES[ctype]))
    return out


def test_decode_follows_the_header_s_struct() -> None:
    from klptrace.record import probes

    layout = _header_layout()
    assert "<" + "".join(fmt for _n, fmt in layout) == probes._EVENT.format
    names = [n for n, _f in layout]
    # header -> Python: bytes laid out by the header decode to the fields they hold
    values = {"ts_ns": 123456789, "ip": 0xffffffffc0001000, "pid": 41, "tid": 42,
              "kind": EventKind.CALLBACK, "ret": -19, "state": ModuleState.COMING,
              "callback": Callback.PRE_PATCH, "flags": 1, "pad": 0, "comm": b"insmod",
              "patch": b"klptrace_lp", "object": b"klptrace_target"}
    raw = probes._EVENT.pack(*(values[n] for n in names))
    ev = probes.decode(raw)
    assert ev == Event(EventKind.CALLBACK, 123456789, pid=41, tid=42, comm="insmod",
                       patch="klptrace_lp", object="klptrace_target",
                       callback=Callback.PRE_PATCH, state=ModuleState.COMING, ret=-19,
                       livepatch=True)
    # Python -> header: what decode reads for each kind is what the header's layout packs
    for kind in (k for k in EventKind if k < 100):
        v = {**values, "kind": kind, "callback": 0, "flags": 0}
        got = probes.decode(probes._EVENT.pack(*(v[n] for n in names)))
        assert (got.kind, got.ts_ns, got.pid, got.tid, got.comm) == (kind, 123456789, 41, 42,
                                                                       "insmod")
        assert got.ret in (None, -19) and got.state in (None, ModuleState.COMING), kind
        assert (got.patch, got.object) == ("klptrace_lp", "klptrace_target"), kind
