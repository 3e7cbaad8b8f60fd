"""elf.read_module on real modules: which functions klptrace probes as callbacks.

tests/data/modules holds modules/acme_lp.c built by gcc-12 for Debian's 6.1
(6.1.0-57-amd64) and by gcc-14 for Debian's 7.3 (7.3.4+deb13-amd64), stripped
of debug info with `strip --strip-debug` (the symbols and relocations stay).
Both carry gcc's acme_prepare.cold; the gcc-14 one also objtool's __pfx_ symbols.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from util import DATA

from klptrace.record import elf

MODULES = DATA / "modules"
GCC12 = MODULES / "acme_lp-6.1-gcc12.ko"
GCC14 = MODULES / "acme_lp-7.3-gcc14.ko"

# acme_lp's four callbacks, and the two functions its klp_funcs point to
CANDIDATES = ("acme_activate", "acme_answer_get", "acme_loadavg_proc_show", "acme_prepare",
              "acme_quiesce", "acme_release")


def test_the_fixtures_have_padding_and_split_parts() -> None:
    """What the tests below rely on: real parts of functions in both builds."""
    old, new = elf.read_module(str(GCC12)), elf.read_module(str(GCC14))
    assert old.name == new.name == "acme_lp"
    assert "acme_prepare.cold" in old.functions and "acme_prepare.cold" in new.functions
    assert not [f for f in old.functions if f.startswith("__pfx_")]
    assert {f"__pfx_{f}" for f in CANDIDATES} <= set(new.functions)


@pytest.mark.parametrize("ko", [GCC12, GCC14], ids=["gcc-12", "gcc-14"])
def test_probes_only_functions_that_data_points_to(ko: Path) -> None:
    mod = elf.read_module(str(ko))
    assert mod.callback_candidates == CANDIDATES
    assert not [f for f in mod.callback_candidates if elf.is_fragment(f)]


def test_gcc14_needs_fewer_than_half_the_probes() -> None:
    mod = elf.read_module(str(GCC14))
    assert (len(mod.functions), len(mod.callback_candidates)) == (13, 6)


def _retarget(data: bytes, old: str, new: str) -> bytes:
    """The module with the first pointer in .data to function old made to point to new."""
    secs = elf._sections(data)
    syms = elf._symbols(data, secs)
    by_name = {s.name: s for s in syms}
    # the section symbol of each section: what the assembler relocates against
    section_sym = {s.shndx: i for i, s in enumerate(syms) if s.type == elf.STT_SECTION}
    rela = next(s for s in secs if s.name == ".rela.data")
    out = bytearray(data)
    for i in range(rela.size // rela.entsize):
        at = rela.offset + i * rela.entsize
        _off, info, addend = struct.unpack_from("<QQq", data, at)
        target = syms[info >> 32]
        if (target.shndx, addend) == (by_name[old].shndx, by_name[old].value):
            info = (section_sym[by_name[new].shndx] << 32) | (info & 0xFFFFFFFF)
            struct.pack_into("<Qq", out, at + 8, info, by_name[new].value)
            return bytes(out)
    raise AssertionError(f"no pointer to {old} in .data")


@pytest.mark.parametrize("ko", [GCC12, GCC14], ids=["gcc-12", "gcc-14"])
def test_a_part_that_data_points_to_is_probed(ko: Path) -> None:
    """The rule is the relocation, not the name: a pointer to a .cold part keeps it."""
    data = _retarget(ko.read_bytes(), "acme_prepare", "acme_prepare.cold")
    mod = elf.parse(data)
    # acme_prepare is still the other klp_object's pre_patch
    assert mod.callback_candidates == tuple(sorted((*CANDIDATES, "acme_prepare.cold")))


def test_without_the_code_tables_rule_padding_would_be_probed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """__patchable_function_entries holds the address of every __pfx_ symbol."""
    monkeypatch.setattr(elf, "CODE_TABLES", frozenset())
    mod = elf.parse(GCC14.read_bytes())
    assert "__pfx_acme_prepare" in mod.callback_candidates


@pytest.mark.parametrize("name,fragment", [
    ("acme_prepare", False), ("__pfx_acme_prepare", True), ("acme_prepare.cold", True),
    ("foo.part.0", True), ("foo.isra.0", True), ("foo.constprop.0", True),
    ("acme_log.constprop.0.isra.0", True), ("foo.cold.12", True), ("pfx_foo", False),
    ("foo_cold", False), ("foo.coldness", False),
])
def test_fragment_names(name: str, fragment: bool) -> None:
    assert elf.is_fragment(name) is fragment


@pytest.mark.parametrize("mangle,why", [
    (lambda b: b"\x7fELF\x01" + b[5:], "not a little-endian ELF64 file"),
    (lambda b: b[:200], "not a valid kernel module"),
    (lambda b: b.replace(b"name=acme_lp", b"nome=acme_lp"), "no name= in .modinfo"),
    (lambda b: b[:0x12] + b"\x03\x00" + b[0x14:], "unsupported ELF machine 3"),
])
def test_broken_modules_are_named_errors(tmp_path: Path, mangle: Callable[[bytes], bytes],
                                         why: str) -> None:
    bad = tmp_path / "bad.ko"
    bad.write_bytes(mangle(GCC14.read_bytes()))
    with pytest.raises(elf.ModuleFileError, match=why):
        elf.read_module(str(bad))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(elf.ModuleFileError, match="cannot read"):
        elf.read_module(str(tmp_path / "none.ko"))
