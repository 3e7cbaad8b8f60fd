"""The output pump (lab/pump.py): copying a child's output, and each way it ends."""

from __future__ import annotations

from klptrace.lab import pump


def test_panic_line() -> None:
    log = "[ 1.0] x\n[ 10.1] Kernel panic - not syncing: sysrq triggered crash\n[ 10.2] CPU: 0\n"
    assert pump.panic_line(log) == "Kernel panic - not syncing: sysrq triggered crash"
    assert pump.panic_line("[ 1.0] all well\n") is None
