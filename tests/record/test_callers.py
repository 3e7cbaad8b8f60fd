"""klptrace.record.callers offline: naming a caller from a /proc/kallsyms snapshot and
from module events (the ring-buffer order itself is tested in test_probes.py)."""

from __future__ import annotations

from pathlib import Path

from klptrace.record import callers


def test_modules_loaded_before_the_recording_come_from_kallsyms(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _stext\n"
                 "ffffffff81000100 T klp_shadow_get\n"
                 "ffffffff82000000 T _etext\n"
                 "ffffffffc0200000 t acme_prepare\t[acme_lp]\n"
                 "ffffffffc0200400 t acme_release\t[acme_lp]\n"
                 "ffffffffc0202000 d acme_data\t[acme_lp]\n"
                 "ffffffffc0300000 t other_fn\t[other]\n"
                 "ffffffffc0400000 t bpf_prog_1\t[bpf]\n")
    c = callers.Callers.snapshot(str(f))
    assert c.resolve(0xffffffff81000110) == "vmlinux"
    assert c.resolve(0xffffffffc0200410) == "acme_lp"
    assert c.resolve(0xffffffffc0300010) == "other"
    assert c.resolve(0xffffffffc0400010) == ""  # a BPF program's: no module's
    assert c.resolve(0xffffffffc01fffff) == ""  # below every module symbol
    # a module loaded since (its do_init_module event) takes precedence over the snapshot
    c.loaded("newer", (0xffffffffc0300000, 0x1000), (0, 0))
    assert c.resolve(0xffffffffc0300010) == "newer"
    # no kallsyms (not root, or none): only modules loaded from now on are named
    assert callers.Callers.snapshot(str(tmp_path / "absent")).resolve(0xffffffff81000110) == ""


def test_init_text_is_forgotten_when_init_is_done() -> None:
    c = callers.Callers()
    c.loaded("lp", (0xffffffffc0a00000, 0x100), (0xffffffffc0b00000, 0x100))
    assert c.resolve(0xffffffffc0b00010) == "lp"
    c.init_done("lp")
    assert (c.resolve(0xffffffffc0b00010), c.resolve(0xffffffffc0a00010)) == ("", "lp")
    c.freed("lp")
    assert c.resolve(0xffffffffc0a00010) == ""
