"""/proc/kallsyms, read by one reader for the compiler and `stall`: vmlinux's symbols only."""

from pathlib import Path

from klptrace.kernel import kallsyms


def test_kallsyms_finds_vmlinux_symbols_only(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _text\n"
                 "ffffffff82a00010 b klp_transition_patch_x\n"
                 "ffffffffc0001000 b klp_target_state\t[acme_lp]\n"
                 "ffffffff82a00020 b klp_transition_patch\n"
                 "ffffffff82a00030 d klp_target_state\n"
                 "ffffffff82a00040 b klp_transition_patch\n")
    got = kallsyms.addresses(["klp_transition_patch", "klp_target_state", "klp_signals_cnt"],
                             str(f))
    assert got == {"klp_transition_patch": 0xffffffff82a00020,
                   "klp_target_state": 0xffffffff82a00030}


def test_kallsyms_first_line_and_name_in_another_column(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff82a00020 b klp_target_state\n"
                 "ffffffff81000000 T klp_target_state klp_target_state\n")
    assert kallsyms.addresses(["klp_target_state"], str(f)) == {
        "klp_target_state": 0xffffffff82a00020}
