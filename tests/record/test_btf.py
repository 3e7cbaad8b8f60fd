"""BTF parsing against a small hand-built BTF blob, and the cache of layouts."""

import json
import os
import struct

import pytest

from klptrace.record import btf


def _blob() -> bytes:
    """struct module { int state; char name[56]; } and a nested, anonymous-member struct."""
    strings = b"\0int\0module\0state\0name\0cbs\0pre\0post\0klp_object\0char\0"
    off = {s: strings.index(b"\0" + s.encode() + b"\0") + 1
           for s in ["int", "module", "state", "name", "cbs", "pre", "post", "klp_object", "char"]}
    types = b""
    # 1: int
    types += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)
    # 2: char
    types += struct.pack("<III", off["char"], 1 << 24, 1) + struct.pack("<I", 8)
    # 3: char[56]
    types += struct.pack("<III", 0, 3 << 24, 0) + struct.pack("<III", 2, 1, 56)
    # 4: struct module { int state @0; char name[56] @ 24 bytes }
    types += struct.pack("<III", off["module"], (4 << 24) | 2, 80)
    types += struct.pack("<III", off["state"], 1, 0) + struct.pack("<III", off["name"], 3, 24 * 8)
    # 5: anonymous struct { int pre @0; int post @8 }
    types += struct.pack("<III", 0, (4 << 24) | 2, 16)
    types += struct.pack("<III", off["pre"], 1, 0) + struct.pack("<III", off["post"], 1, 64)
    # 6: struct klp_object { int name @0; <anon 5> @16; }  (anonymous member)
    types += struct.pack("<III", off["klp_object"], (4 << 24) | 2, 40)
    types += struct.pack("<III", off["name"], 1, 0) + struct.pack("<III", 0, 5, 128)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_offsets_and_sizes() -> None:
    b = btf.BTF(_blob())
    assert b.offsetof("module", "name") == 24
    assert b.offsetof("module", "state") == 0
    assert b.sizeof("module") == 80
    assert b.offsetof("klp_object", "post") == 16 + 8  # through the anonymous member


def test_missing_struct_and_member_are_named() -> None:
    b = btf.BTF(_blob())
    with pytest.raises(btf.BTFError, match="struct klp_patch"):
        b.offsetof("klp_patch", "mod")
    with pytest.raises(btf.BTFError, match="no member nope"):
        b.offsetof("module", "nope")


def test_not_btf() -> None:
    with pytest.raises(btf.BTFError):
        btf.BTF(b"\0" * 64)


def _with_empty_module(first: bool) -> btf.BTF:
    """_blob() plus an empty `struct module {}`, before or after the real one."""
    blob = _blob()
    type_len = struct.unpack_from("<I", blob, 12)[0]
    types, strings = blob[24:24 + type_len], blob[24 + type_len:]
    empty = struct.pack("<III", strings.index(b"\0module\0") + 1, 4 << 24, 0)
    types = empty + types if first else types + empty
    return btf.BTF(struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                               len(strings)) + types + strings)


def test_a_definition_with_members_wins_over_an_empty_one() -> None:
    # (prepending shifts every type id by one, so only sizes are asked there)
    assert _with_empty_module(first=True).sizeof("module") == 80
    b = _with_empty_module(first=False)
    assert b.sizeof("module") == 80
    assert b.offsetof("module", "name") == 24


def _notes(*items: tuple[bytes, int, bytes]) -> bytes:
    """ELF notes as /sys/kernel/notes holds them: (name, type, desc), 4-byte aligned."""
    out = b""
    for name, ntype, desc in items:
        name += b"\0"
        out += struct.pack("=III", len(name), len(desc), ntype)
        out += name + b"\0" * (-len(name) % 4) + desc + b"\0" * (-len(desc) % 4)
    return out


def test_kernel_build_id() -> None:
    bid = bytes.fromhex("4a5a9b0affb66c437abcd455d2738af879985fa9")
    notes = _notes((b"Xen", 6, b"\1\2\3"), (b"GNU", 3, bid), (b"Linux", 1, b"\0\0\0\0"))
    assert btf.kernel_build_id(notes) == bid.hex()
    assert btf.kernel_build_id(_notes((b"Linux", 3, b"x"))) is None
    assert btf.kernel_build_id(b"\x01") is None


def test_the_layout_is_kept_per_build_id(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = tmp_path / "notes"
    notes.write_bytes(_notes((b"GNU", 3, b"\xab\xcd")))
    computed: list[str] = []
    monkeypatch.setattr(btf.BTF, "load", classmethod(lambda cls, path: computed.append(path)))
    monkeypatch.setattr(btf, "layout", lambda b: {k: 8 for k in btf.LAYOUT_NAMES})
    first = btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    again = btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    assert first == again and computed == ["vmlinux"]  # read once, for this build
    assert (tmp_path / "cache" / "layout" / "abcd.json").is_file()
    # a cache of another klptrace (other fields) or a torn file is not trusted
    (tmp_path / "cache" / "layout" / "abcd.json").write_text('{"OFF_X": 1}')
    btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    assert computed == ["vmlinux", "vmlinux"]
    # no build id: nothing is kept
    btf.cached_layout(tmp_path / "c2", str(tmp_path / "absent"), "vmlinux")
    assert not (tmp_path / "c2").exists()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """BTF reads, counted; each gives the same layout (every value 8)."""
    computed: list[str] = []
    monkeypatch.setattr(btf.BTF, "load", classmethod(lambda cls, path: computed.append(path)))
    monkeypatch.setattr(btf, "layout", lambda b: {k: 8 for k in btf.LAYOUT_NAMES})
    return computed


def _each_name(value: str, extra: str = "") -> str:
    return "{" + ", ".join(f'"{k}": {value}' for k in btf.LAYOUT_NAMES) + extra + "}"


@pytest.mark.parametrize("text", [
    "not json", "[" * 100_000, "1" * 5000, "[]", _each_name("8") + " true",
    _each_name("8", ', "EXTRA": 1'), _each_name("8").replace('"OFF_TASK_PID": 8, ', ""),
    _each_name('"8 -include /etc/shadow"'), _each_name("true"), _each_name("-8"),
    _each_name("65536"), _each_name("8.0"), _each_name("8" * 5000),
])
def test_a_malformed_cached_layout_is_a_miss(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                             text: str) -> None:
    """A cached layout becomes -D flags of the BPF compile: only the known names with
    small non-negative ints are taken from the cache; anything else is computed again
    (and the file replaced)."""
    notes = tmp_path / "notes"
    notes.write_bytes(_notes((b"GNU", 3, b"\xab\xcd")))
    computed = _counting(monkeypatch)
    saved = tmp_path / "cache" / "layout" / "abcd.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(text)
    got = btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    assert computed == ["vmlinux"]
    assert got == {k: 8 for k in btf.LAYOUT_NAMES}
    assert json.loads(saved.read_text()) == got


def test_a_well_formed_cached_layout_is_taken(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes = tmp_path / "notes"
    notes.write_bytes(_notes((b"GNU", 3, b"\xab\xcd")))
    computed = _counting(monkeypatch)
    saved = tmp_path / "cache" / "layout" / "abcd.json"
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps({k: i for i, k in enumerate(btf.LAYOUT_NAMES)}))
    got = btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    assert computed == [] and got["OFF_MODULE_NAME"] == 0 and got["SIZE_KLP_OBJECT"] == 15


def test_saving_a_layout_follows_no_planted_link(tmp_path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    """The old temporary name (<bid>.<pid>.tmp) was predictable and written through a
    link; the layout is now written to a new file made with O_EXCL, and renamed over the
    cached one (a link there is replaced, not followed)."""
    notes = tmp_path / "notes"
    notes.write_bytes(_notes((b"GNU", 3, b"\xab\xcd")))
    _counting(monkeypatch)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    layouts = tmp_path / "cache" / "layout"
    layouts.mkdir(parents=True)
    (layouts / f"abcd.{os.getpid()}.tmp").symlink_to(victim)
    (layouts / "abcd.json").symlink_to(victim)  # read: not a layout, so a miss
    btf.cached_layout(tmp_path / "cache", str(notes), "vmlinux")
    assert victim.read_text() == "untouched\n"
    assert not (layouts / "abcd.json").is_symlink()
    assert json.loads((layouts / "abcd.json").read_text())["OFF_MODULE_NAME"] == 8
    assert {p.name for p in layouts.iterdir()} == {"abcd.json", f"abcd.{os.getpid()}.tmp"}


def test_a_guest_shares_the_hosts_layouts(tmp_path) -> None:
    """The guest's command points its cache at the host's and may write its layouts
    there: the directory cached_layout uses, which the guest must see writable."""
    prefix, rwdir = btf.guest_layout_share(tmp_path / "cache")
    assert prefix == ["env", f"KLPTRACE_CACHE={tmp_path / 'cache'}"]
    assert rwdir == btf.layout_dir(tmp_path / "cache") == tmp_path / "cache" / "layout"


def test_a_kernel_without_klp_state_or_module_text_says_so() -> None:
    """No struct klp_state (before v5.5) and a struct module without mem[] or
    core_layout: the optional parts are flagged unsupported, the layout still made."""
    b = btf.BTF(_blob())
    state = btf.state_layout(b)
    assert state["KLPT_STATE_SHAPE"] == btf.STATE_ABSENT
    assert set(state) == set(btf.STATE_FIELDS)
    text = btf.module_text_layout(b)
    assert text["KLPT_MODULE_TEXT"] == btf.MODTEXT_UNKNOWN and text["OFF_MODULE_TEXT"] == 0
    assert b.member_size("module", "state") == 4
    with pytest.raises(btf.BTFError, match="no plain size"):
        b.member_size("module", "name")  # an array
    with pytest.raises(btf.BTFError, match="enumerator MOD_TEXT"):
        b.enum_value("MOD_TEXT")
