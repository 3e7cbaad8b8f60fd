"""The parts of klptrace.record.probes that need no kernel: the grace-period setting, kallsyms,
and reading what the kernel says about the kprobes on a module."""

from __future__ import annotations

from pathlib import Path

import pytest
from util import DATA

from klptrace.kernel import kernelfs
from klptrace.record import probes


@pytest.fixture(autouse=True)
def _writable_knob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting's writes go through kernelfs: let it write this test's files."""
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))


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


# -- the armed-probe check, on what the kernel said in the lab guest ----------------
# tests/data/kprobes/<kernel>/: deferred probes on acme_lp (gcc-12 for 6.1, gcc-14 for
# 7.3): "good" and "goodr" on acme_prepare, "pfx" on __pfx_acme_prepare (padding on
# 7.3, absent on 6.1), "nosuch" on a function acme_lp lacks; then acme_lp loaded
# (list-loaded.txt), and unloaded (list-gone.txt); dmesg.txt is the log meanwhile.
KPROBES = DATA / "kprobes"


def _log(kernel: str) -> list[str]:
    """The messages of a saved dmesg, as /dev/kmsg gives them (no timestamp)."""
    text = (KPROBES / kernel / "dmesg.txt").read_text()
    return [line.split("] ", 1)[1] for line in text.splitlines()]


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_the_listing_names_a_loaded_modules_probes(kernel: str) -> None:
    listed = probes.registered_kprobes((KPROBES / kernel / "list-loaded.txt").read_text())
    assert listed == {("k", "acme_lp", "acme_prepare"): 1, ("r", "acme_lp", "acme_prepare"): 1}


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_the_listing_of_a_freed_module_names_nothing(kernel: str) -> None:
    text = (KPROBES / kernel / "list-gone.txt").read_text()
    assert "[GONE]" in text and probes.registered_kprobes(text) == {}


def test_the_kernels_reasons_for_not_arming() -> None:
    assert probes.rearm_failures(_log("7.3")) == {
        "pfx": "Could not probe notrace function __pfx_acme_prepare [acme_lp]; "
               "Failed to re-register probe pfx on acme_lp: -22 (EINVAL)",
        "nosuch": "Failed to re-register probe nosuch on acme_lp: -2 (ENOENT)"}
    # 6.1's gcc-12 build has no __pfx_ symbol; the line before is no reason
    assert probes.rearm_failures(_log("6.1")) == {
        "pfx": "Failed to re-register probe pfx on acme_lp: -2 (ENOENT)",
        "nosuch": "Failed to re-register probe nosuch on acme_lp: -2 (ENOENT)"}


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_each_deferred_probe_logs_one_line_when_registered(kernel: str) -> None:
    log = _log(kernel)
    before_load = log[:next(i for i, m in enumerate(log) if m.startswith("klptrace_target"))]
    assert [m for m in before_load if m.startswith(probes.DEFERRED_MESSAGE)] == [
        before_load[1]] * 4


def _probe(event: str, kind: str, symbol: str) -> probes.ModuleProbe:
    st = probes.ProbeStatus(f"kprobe:acme_lp:{symbol}", f"acme_lp:{symbol}", True)
    return probes.ModuleProbe(event, kind, "acme_lp", symbol, st)


def test_judge_from_the_log_and_the_listing() -> None:
    listed = probes.registered_kprobes((KPROBES / "7.3" / "list-loaded.txt").read_text())
    failed = probes.rearm_failures(_log("7.3"))
    good, goodr = _probe("good", "k", "acme_prepare"), _probe("goodr", "r", "acme_prepare")
    pfx, nosuch = _probe("pfx", "k", "__pfx_acme_prepare"), _probe("nosuch", "k", "x")
    for mp in (good, goodr, pfx, nosuch):
        probes._judge(mp, failed.get(mp.event), listed)
    assert (good.status.ok, good.status.armed) == (goodr.status.ok, goodr.status.armed) == (
        True, True)
    assert (pfx.status.ok, pfx.status.armed) == (nosuch.status.ok, nosuch.status.armed) == (
        False, False)
    assert "Could not probe notrace function __pfx_acme_prepare" in pfx.status.reason
    assert pfx.status.to_json()["armed"] is False


def test_judge_without_a_reason_or_a_trusted_listing() -> None:
    # missing from a trusted listing, and the log said nothing: still not armed
    lost = _probe("lost", "k", "acme_activate")
    probes._judge(lost, None, probes.registered_kprobes(""))
    assert lost.status.armed is False and "not in /sys/kernel/debug/kprobes/list" in (
        lost.status.reason)
    # no trusted listing (the module was freed before it was read), nothing logged:
    # nothing is known, so nothing is claimed
    unknown = _probe("unknown", "k", "acme_activate")
    probes._judge(unknown, None, None)
    assert (unknown.status.ok, unknown.status.armed) == (True, None)
    assert "armed" not in unknown.status.to_json()


def test_event_names_are_ones_the_kernel_accepts() -> None:
    assert probes.event_name("p", 0, 3, "acme_prepare.cold") == "p0_3_acme_prepare_cold"
    assert len(probes.event_name("r", 1, 2, "x" * 80)) == 60
