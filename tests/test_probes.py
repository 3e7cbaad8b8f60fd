"""The parts of klptrace.record.probes that need no kernel: the grace-period setting."""

from __future__ import annotations

from pathlib import Path

import pytest

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
