"""The parts of klptrace.probes that need no kernel: the grace-period setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace import probes


def test_expedites_and_puts_back(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    with probes.expedited_grace_periods(str(knob)):
        assert knob.read_text() == "1"
    assert knob.read_text() == "0"


def test_puts_back_after_an_error(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("0\n")
    with pytest.raises(KeyboardInterrupt), probes.expedited_grace_periods(str(knob)):
        raise KeyboardInterrupt
    assert knob.read_text() == "0"


def test_leaves_an_expedited_kernel_alone(tmp_path: Path) -> None:
    knob = tmp_path / "rcu_expedited"
    knob.write_text("1\n")
    with probes.expedited_grace_periods(str(knob)):
        pass
    assert knob.read_text() == "1\n"  # not rewritten at all


def test_no_setting_is_no_error(tmp_path: Path) -> None:
    with probes.expedited_grace_periods(str(tmp_path / "absent")):
        pass
    assert not (tmp_path / "absent").exists()


def test_kallsyms_finds_vmlinux_symbols_only(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _text\n"
                 "ffffffff82a00010 b klp_transition_patch_x\n"
                 "ffffffffc0001000 b klp_target_state\t[acme_lp]\n"
                 "ffffffff82a00020 b klp_transition_patch\n"
                 "ffffffff82a00030 d klp_target_state\n"
                 "ffffffff82a00040 b klp_transition_patch\n")
    got = probes._kallsyms(["klp_transition_patch", "klp_target_state", "klp_signals_cnt"],
                           str(f))
    assert got == {"klp_transition_patch": 0xffffffff82a00020,
                   "klp_target_state": 0xffffffff82a00030}


def test_kallsyms_first_line_and_name_in_another_column(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff82a00020 b klp_target_state\n"
                 "ffffffff81000000 T klp_target_state klp_target_state\n")
    assert probes._kallsyms(["klp_target_state"], str(f)) == {
        "klp_target_state": 0xffffffff82a00020}
