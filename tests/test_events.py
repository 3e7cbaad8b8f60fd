"""The vocabulary: Python and the BPF header agree, and events round-trip JSON."""

import re

import pytest
from util import REPO

from klptrace.events import OPS, Callback, Event, EventKind, ModuleState, ShadowOp, StateOp


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
             ("NAME_LEN", "COMM_LEN") and not name.startswith(("OP_", "F_"))}
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
              "patch": b"klptrace_lp", "object": b"klptrace_target",
              "addr": 0xffff888004000010, "obj": 0xffff888003c1e000, "id": 42, "size": 24,
              "op": 3, "version": 2}
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


def test_header_ops_match_python() -> None:
    defs = _header_defines()
    header = {n: v for n, v in defs.items() if n.startswith("OP_")}
    python = {(f"OP_{op.name}_STATE" if isinstance(op, StateOp) else f"OP_SHADOW_{op.name}"): n
              for n, op in OPS.items()}
    assert header == python
    assert set(OPS.values()) >= set(StateOp) and len(OPS) == len(StateOp) + len(ShadowOp)


def test_state_and_shadow_events_round_trip_json() -> None:
    get = Event(EventKind.STATE, 5, pid=1, tid=1, comm="insmod", patch="lp2",
                op=StateOp.GET_PREV, state_id=42, version=None, caller="klptrace_state_lp2",
                callback=Callback.PRE_PATCH)
    d = get.to_json()
    assert (d["op"], d["state_id"], d["version"], d["caller"]) == ("get_prev", 42, None,
                                                                   "klptrace_state_lp2")
    assert Event.from_json(d) == get
    alloc = Event(EventKind.SHADOW, 6, op=ShadowOp.ALLOC, obj=0xffff888003c1e000,
                  shadow_id=7, size=8, addr=0xffff888004000010, caller="m")
    d = alloc.to_json()
    # 64-bit addresses are hex strings: JSON numbers are doubles in most readers
    assert (d["obj"], d["ret"], d["size"]) == ("0xffff888003c1e000", "0xffff888004000010", 8)
    assert Event.from_json(d) == alloc
    free_all = Event(EventKind.SHADOW, 7, op=ShadowOp.FREE_ALL, shadow_id=7)
    d = free_all.to_json()
    assert "obj" not in d and d["ret"] is None and "size" not in d
    assert Event.from_json(d) == free_all
    declared = Event(EventKind.STATE_DECLARED, 8, patch="lp", state_id=42, version=2)
    assert Event.from_json(declared.to_json()) == declared


def test_a_bad_address_or_op_is_refused() -> None:
    d = Event(EventKind.SHADOW, 6, op=ShadowOp.GET, obj=1, shadow_id=7).to_json()
    for bad in ({"obj": 12}, {"obj": "0xZZ"}, {"obj": "0x" + "f" * 17}, {"op": "steal"},
                {"shadow_id": "7"}):
        with pytest.raises((ValueError, TypeError)):
            Event.from_json({**d, **bad})


def test_decode_fills_the_state_and_shadow_fields_from_the_header_s_struct() -> None:
    from klptrace.record import callers, probes

    names = [n for n, _f in _header_layout()]
    base = {"ts_ns": 9, "ip": 0xffffffffc0001234, "pid": 41, "tid": 42, "ret": 0, "state": 0,
            "callback": Callback.POST_UNPATCH, "flags": 0, "pad": 0, "comm": b"rmmod",
            "patch": b"lp", "object": b"vmlinux", "addr": 0xffff888004000010,
            "obj": 0xffff888003c1e000, "id": 42, "size": 24, "version": 2}
    known = callers.Callers()
    known.loaded("lp", (0xffffffffc0001000, 0x1000), (0, 0))

    def dec(kind: EventKind, op: int, flags: int = 0) -> Event:
        v = {**base, "kind": kind, "op": op, "flags": flags}
        return probes.decode(probes._EVENT.pack(*(v[n] for n in names)), known)

    common = {"ts_ns": 9, "pid": 41, "tid": 42, "comm": "rmmod", "patch": "lp",
              "object": "vmlinux", "callback": Callback.POST_UNPATCH, "caller": "lp"}
    for n, op in OPS.items():
        if isinstance(op, ShadowOp):
            sized = op in (ShadowOp.ALLOC, ShadowOp.GET_OR_ALLOC)
            assert dec(EventKind.SHADOW, n) == Event(
                EventKind.SHADOW, op=op, shadow_id=42, size=24 if sized else None,
                obj=None if op == ShadowOp.FREE_ALL else 0xffff888003c1e000,
                addr=0xffff888004000010, **common), op  # type: ignore[arg-type]
        else:
            # a state found: F_FOUND (2); none: version None
            assert dec(EventKind.STATE, n, flags=2) == Event(
                EventKind.STATE, op=op, state_id=42, version=2, addr=None,
                **common)  # type: ignore[arg-type]
            assert dec(EventKind.STATE, n).version is None
    declared = dec(EventKind.STATE_DECLARED, 0, flags=2)
    assert (declared.state_id, declared.version, declared.patch, declared.caller) == (
        42, 2, "lp", "")
