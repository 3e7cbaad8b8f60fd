"""Struct layouts from the kernel's BTF (/sys/kernel/btf/vmlinux).

klptrace's BPF C defines no kernel structures: it gets the offsets of the few
fields it reads as -D flags computed here, which keeps the compile fast and
follows the running kernel's real layout instead of a header's.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from klptrace.errors import KlptraceError

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

_BTF_MAGIC = 0xEB9F
# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
# bytes that follow the 12-byte common header, per kind: (fixed, per vlen item)
_TAIL = {
    _INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
    _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0), _ENUM64: (0, 12),
}


class BTFError(KlptraceError):
    """The kernel's BTF is missing, unreadable or lacks a needed field."""


class BTF:
    """The struct and union types of one BTF blob, looked up by name."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BTFError("BTF data is truncated")
        magic, _ver, _flags, hdr_len = struct.unpack_from("=HBBI", data, 0)
        if magic != _BTF_MAGIC:
            raise BTFError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("=IIII", data, 8)
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(data) or self._str_end > len(data):
            raise BTFError("BTF data is truncated")
        self._offsets: list[int] = [0]  # type id -> word index of its record (0 is void)
        self._structs: dict[int, int] = {}  # name offset -> type id of a struct or union
        self._index()

    @classmethod
    def load(cls, path: str = VMLINUX_BTF) -> BTF:
        """Read a BTF file, by default the running kernel's."""
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BTFError(
                f"cannot read the kernel's BTF at {path}: {e.strerror}",
                "klptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y",
            ) from e

    def _name(self, off: int) -> str:
        start = self._str_start + off
        end = self._data.index(b"\0", start, self._str_end)
        return self._data[start:end].decode("ascii", "replace")

    def _index(self) -> None:
        # Every record, in one pass (ids are positions); names are only
        # decoded on lookup. This loop is most of klptrace's layout time, so
        # it reads the section as 32-bit words (BTF records are whole words,
        # in the kernel's byte order) instead of unpacking each one.
        if (self._types_end - self._types_start) % 4 or self._types_start % 4:
            raise BTFError("BTF type section is not made of 32-bit words")
        words = memoryview(self._data)[self._types_start:self._types_end].cast("I")
        offsets, structs = self._offsets, self._structs
        append = offsets.append
        fixed = [_TAIL.get(k, (0, 0))[0] // 4 for k in range(32)]
        per = [_TAIL.get(k, (0, 0))[1] // 4 for k in range(32)]
        i, n = 0, len(words)
        while i < n:
            append(i)
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            if (kind == _STRUCT or kind == _UNION) and words[i]:
                name_off = words[i]
                # the first definition with members wins over empty ones
                if name_off not in structs or (vlen and not self._has_members(structs[name_off])):
                    structs[name_off] = len(offsets) - 1
            i += 3 + fixed[kind] + per[kind] * vlen

    def _has_members(self, tid: int) -> bool:
        return bool(self._record(tid)[2] & 0xFFFF)

    def _name_offsets(self, name: str) -> list[int]:
        """Where name is in the string section (usually once: strings are deduplicated)."""
        needle = b"\0" + name.encode() + b"\0"
        out = []
        at = self._data.find(needle, self._str_start, self._str_end)
        while at >= 0:
            out.append(at + 1 - self._str_start)
            at = self._data.find(needle, at + 1, self._str_end)
        return out

    def _record(self, tid: int) -> tuple[int, int, int, int]:
        pos = self._types_start + 4 * self._offsets[tid]
        name_off, info, size_or_type = struct.unpack_from("=III", self._data, pos)
        return pos, name_off, info, size_or_type

    def _resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        for _ in range(64):
            _pos, _n, info, size_or_type = self._record(tid)
            if (info >> 24) & 0x1F not in _MODIFIERS:
                return tid
            tid = size_or_type
        raise BTFError(f"type {tid}: typedef loop")

    def _struct_id(self, name: str) -> int:
        found = [self._structs[off] for off in self._name_offsets(name) if off in self._structs]
        if not found:
            raise BTFError(
                f"struct {name} is not in this kernel's BTF",
                "is the kernel built with CONFIG_LIVEPATCH=y?",
            )
        with_members = [tid for tid in found if self._has_members(tid)]
        return min(with_members or found)

    def _members(self, tid: int) -> Iterable[tuple[str, int, int]]:
        pos, _n, info, _size = self._record(tid)
        kflag = info >> 31
        for i in range(info & 0xFFFF):
            m_name, m_type, m_off = struct.unpack_from("=III", self._data, pos + 12 + 12 * i)
            bit_off = m_off & 0xFFFFFF if kflag else m_off
            yield self._name(m_name) if m_name else "", m_type, bit_off

    def sizeof(self, struct_name: str) -> int:
        """sizeof(struct struct_name)."""
        return self._record(self._struct_id(struct_name))[3]

    def offsetof(self, struct_name: str, path: str) -> int:
        """offsetof(struct struct_name, a.b.c), through nested and anonymous members."""
        tid = self._struct_id(struct_name)
        total = 0
        for part in path.split("."):
            found = self._find_member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel")
            bits, tid = found
            if bits % 8:
                raise BTFError(f"{struct_name}.{path} is a bit field")
            total += bits // 8
        return total

    def has(self, struct_name: str, path: str) -> bool:
        """Whether struct struct_name exists with a member path (a.b.c)."""
        try:
            self.offsetof(struct_name, path)
        except BTFError:
            return False
        return True

    def member_size(self, struct_name: str, path: str) -> int:
        """sizeof a member: its type's size, 8 for a pointer (x86-64, arm64)."""
        tid = self._struct_id(struct_name)
        for part in path.split("."):
            found = self._find_member(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path} in this kernel")
            tid = found[1]
        tid = self._resolve(tid)
        _pos, _n, info, size_or_type = self._record(tid)
        kind = (info >> 24) & 0x1F
        if kind == _PTR:
            return 8
        if kind in (_INT, _STRUCT, _UNION, _ENUM, _ENUM64):
            return size_or_type
        raise BTFError(f"{struct_name}.{path} has no plain size (BTF kind {kind})")

    def enum_value(self, name: str) -> int:
        """The value of an enumerator (of any enum) by its name."""
        offs = set(self._name_offsets(name))
        if offs:
            for tid in range(1, len(self._offsets)):
                pos, _n, info, _size = self._record(tid)
                if (info >> 24) & 0x1F != _ENUM:
                    continue
                for i in range(info & 0xFFFF):
                    e_name, e_val = struct.unpack_from("=Ii", self._data, pos + 12 + 8 * i)
                    if e_name in offs:
                        return int(e_val)
        raise BTFError(f"enumerator {name} is not in this kernel's BTF")

    def _find_member(self, tid: int, name: str) -> tuple[int, int] | None:
        tid = self._resolve(tid)
        for m_name, m_type, bits in self._members(tid):
            if m_name == name:
                return bits, m_type
            if not m_name:  # anonymous struct or union: search inside
                inner = self._resolve(m_type)
                if (self._record(inner)[2] >> 24) & 0x1F in (_STRUCT, _UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return bits + found[0], found[1]
        return None


#: -D flag name -> (struct, member path); what bpf/klptrace.bpf.c reads
FIELDS = {
    "OFF_MODULE_NAME": ("module", "name"),
    "OFF_MODULE_STATE": ("module", "state"),
    "OFF_MODULE_KLP": ("module", "klp"),
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_COMM": ("task_struct", "comm"),
    "OFF_KLP_PATCH_MOD": ("klp_patch", "mod"),
    "OFF_KLP_PATCH_OBJS": ("klp_patch", "objs"),
    "OFF_KLP_OBJECT_NAME": ("klp_object", "name"),
    "OFF_KLP_OBJECT_FUNCS": ("klp_object", "funcs"),
    "OFF_KLP_OBJECT_MOD": ("klp_object", "mod"),
    "OFF_KLP_OBJECT_CB_PRE_PATCH": ("klp_object", "callbacks.pre_patch"),
    "OFF_KLP_OBJECT_CB_POST_PATCH": ("klp_object", "callbacks.post_patch"),
    "OFF_KLP_OBJECT_CB_PRE_UNPATCH": ("klp_object", "callbacks.pre_unpatch"),
    "OFF_KLP_OBJECT_CB_POST_UNPATCH": ("klp_object", "callbacks.post_unpatch"),
}
SIZES = {"SIZE_KLP_OBJECT": "klp_object"}


#: KLPT_STATE_SHAPE: whether the state probes can read this kernel's struct klp_state
STATE_OK, STATE_ABSENT, STATE_OTHER_SHAPE = 1, 2, 3
#: KLPT_MODULE_TEXT: where struct module keeps its text (for the callers of the state and
#: shadow functions): mem[MOD_TEXT] and mem[MOD_INIT_TEXT] since Linux kernel commit
#: ac3b43283923 ("module: replace module_layout with module_memory") (in v6.4),
#: core_layout and init_layout before; neither: callers are not resolved from BPF
MODTEXT_MEM, MODTEXT_LAYOUT, MODTEXT_UNKNOWN = 1, 2, 3
#: what the optional parts add (always these names, 0 when a part is unsupported)
STATE_FIELDS = ("OFF_KLP_PATCH_STATES", "OFF_KLP_STATE_ID", "OFF_KLP_STATE_VERSION",
                "SIZE_KLP_STATE", "KLPT_STATE_SHAPE")
MODTEXT_FIELDS = ("OFF_MODULE_TEXT", "OFF_MODULE_TEXT_SIZE", "OFF_MODULE_INIT_TEXT",
                  "OFF_MODULE_INIT_TEXT_SIZE", "KLPT_MODULE_TEXT")

#: every name layout() gives a value
LAYOUT_NAMES = (*FIELDS, *SIZES, *STATE_FIELDS, *MODTEXT_FIELDS)


def layout(btf: BTF) -> dict[str, int]:
    """The offsets and sizes the BPF programs need, as -D name -> value."""
    out = {name: btf.offsetof(s, path) for name, (s, path) in FIELDS.items()}
    out.update({name: btf.sizeof(s) for name, s in SIZES.items()})
    out.update(state_layout(btf))
    out.update(module_text_layout(btf))
    return out


def state_layout(btf: BTF) -> dict[str, int]:
    """struct klp_state and klp_patch.states, as kernel/livepatch/state.c reads them
    (klp_for_each_state: an array ended by id 0), if this kernel's are that shape.

    struct klp_state came with Linux kernel commit 73727f4dafae ("livepatch: Basic API to
    track system state changes") and its version with "livepatch: Allow to distinguish
    different version of system state changes" (both in v5.5). klptrace reads id as an
    unsigned long and version as an unsigned int; members added beside them (a per-state
    callbacks rework has been posted upstream) change nothing read here, as the array's
    stride is sizeof(struct klp_state). Any other shape is STATE_OTHER_SHAPE: the state
    probes are then not attached (probes.state_support says why)."""
    out = dict.fromkeys(STATE_FIELDS, 0)
    if not btf.has("klp_state", "id") or not btf.has("klp_patch", "states"):
        out["KLPT_STATE_SHAPE"] = STATE_ABSENT
        return out
    try:
        shaped = (btf.has("klp_state", "version") and btf.member_size("klp_state", "id") == 8
                  and btf.member_size("klp_state", "version") == 4
                  and btf.member_size("klp_patch", "states") == 8)
    except BTFError:  # a member of no plain size (an array, a function)
        shaped = False
    if not shaped:
        out["KLPT_STATE_SHAPE"] = STATE_OTHER_SHAPE
        return out
    out.update(OFF_KLP_PATCH_STATES=btf.offsetof("klp_patch", "states"),
               OFF_KLP_STATE_ID=btf.offsetof("klp_state", "id"),
               OFF_KLP_STATE_VERSION=btf.offsetof("klp_state", "version"),
               SIZE_KLP_STATE=btf.sizeof("klp_state"), KLPT_STATE_SHAPE=STATE_OK)
    return out


def module_text_layout(btf: BTF) -> dict[str, int]:
    """Where a struct module's core and init text start and how long they are."""
    out = dict.fromkeys(MODTEXT_FIELDS, 0)
    out["KLPT_MODULE_TEXT"] = MODTEXT_UNKNOWN
    try:
        if btf.has("module", "mem") and btf.has("module_memory", "base"):
            mem, each = btf.offsetof("module", "mem"), btf.sizeof("module_memory")
            base, size = btf.offsetof("module_memory", "base"), \
                btf.offsetof("module_memory", "size")
            if btf.member_size("module_memory", "size") != 4:
                return out
            text, init = btf.enum_value("MOD_TEXT"), btf.enum_value("MOD_INIT_TEXT")
            out.update(OFF_MODULE_TEXT=mem + text * each + base,
                       OFF_MODULE_TEXT_SIZE=mem + text * each + size,
                       OFF_MODULE_INIT_TEXT=mem + init * each + base,
                       OFF_MODULE_INIT_TEXT_SIZE=mem + init * each + size,
                       KLPT_MODULE_TEXT=MODTEXT_MEM)
        elif btf.has("module", "core_layout.text_size"):
            if btf.member_size("module", "core_layout.text_size") != 4:
                return out
            out.update(OFF_MODULE_TEXT=btf.offsetof("module", "core_layout.base"),
                       OFF_MODULE_TEXT_SIZE=btf.offsetof("module", "core_layout.text_size"),
                       OFF_MODULE_INIT_TEXT=btf.offsetof("module", "init_layout.base"),
                       OFF_MODULE_INIT_TEXT_SIZE=btf.offsetof("module",
                                                              "init_layout.text_size"),
                       KLPT_MODULE_TEXT=MODTEXT_LAYOUT)
    except BTFError:
        out = dict.fromkeys(MODTEXT_FIELDS, 0)
        out["KLPT_MODULE_TEXT"] = MODTEXT_UNKNOWN
    return out


def kernel_build_id(notes: bytes) -> str | None:
    """The GNU build id among the ELF notes of /sys/kernel/notes (hex), if any."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("=III", notes, at)
        name_at = at + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        if notes[name_at:name_at + namesz].rstrip(b"\0") == b"GNU" and ntype == 3:  # BUILD_ID
            return notes[desc_at:desc_at + descsz].hex()
        at = desc_at + (descsz + 3) // 4 * 4
    return None


def layout_dir(cache: Path) -> Path:
    """Where cached_layout keeps its files in cache: one per kernel build id."""
    return cache / "layout"


def guest_layout_share(cache: Path) -> tuple[list[str], Path]:
    """What a command run in the lab guest needs to share this host's layouts: the `env`
    prefix that points the guest's cache at cache, and the directory it must write."""
    return ["env", f"KLPTRACE_CACHE={cache}"], layout_dir(cache)


def cached_layout(cache: Path, notes_path: str = "/sys/kernel/notes",
                  btf_path: str = VMLINUX_BTF) -> dict[str, int]:
    """layout() of the running kernel, kept per kernel build id in cache: the same build
    is the same BTF, which took 1.0-1.4 s to read in the emulated guest (what remains of
    the `layout_s` timing once it is cached is reading /proc/kallsyms)."""
    try:
        with open(notes_path, "rb") as f:
            bid = kernel_build_id(f.read())
    except OSError:
        bid = None
    saved = layout_dir(cache) / f"{bid}.json" if bid else None
    if saved is not None:
        got = _read_layout(saved)
        if got is not None:
            return got
    out = layout(BTF.load(btf_path))
    if saved is not None:
        with contextlib.suppress(OSError):
            _save_layout(saved, out)
    return out


#: larger than any offset or size klptrace reads (task_struct, the largest, is ~10 KiB)
_LAYOUT_MAX = 1 << 16


def _read_layout(path: Path) -> dict[str, int] | None:
    """The layout saved at path, or None when it is missing or not exactly what layout()
    makes: its values become -D flags of the BPF compile, so anything else is a miss."""
    try:
        with open(path, "rb") as f:
            got = json.loads(f.read(_LAYOUT_MAX))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(got, dict) or set(got) != set(LAYOUT_NAMES):
        return None
    if not all(type(v) is int and 0 <= v < _LAYOUT_MAX for v in got.values()):
        return None  # a bool is an int to isinstance
    return {str(k): v for k, v in got.items()}


def _save_layout(saved: Path, out: dict[str, int]) -> None:
    """Write out to saved whole or not at all, through a temporary file of its own
    (mkstemp: O_EXCL and O_NOFOLLOW, so nothing planted there is followed)."""
    saved.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{saved.stem}.", suffix=".tmp", dir=saved.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(out, sort_keys=True) + "\n")
        os.replace(tmp, saved)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
