"""klptrace.record.probes offline: the grace-period setting, and detaching (at once, or by
a child once klptrace has exited) from a stand-in for what bcc attached."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from klptrace.kernel import kernelfs, kmsg
from klptrace.record import kprobes, probes


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


# -- detaching: at once, or by a child once klptrace has exited -------------------------


class _Log:
    """The kernel log the armed check reads (kmsg.KernelLog)."""

    closed = False

    def read(self) -> list[str]:
        return []

    def close(self) -> None:
        self.closed = True


class _Attached:
    """What bcc's BPF object is to Probes once attached: cleanup() detaches it all."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def cleanup(self) -> None:
        self.marker.write_text(f"cleaned up by pid {os.getpid()}")


EVENTS = ["klptrace/p0_0_acme_prepare", "klptrace/r0_0_acme_prepare"]


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kprobe_events and rcu_expedited in a fake tree, both "0" or empty."""
    events = tmp_path / "kprobe_events"
    events.write_text("")
    (tmp_path / "rcu_expedited").write_text("0\n")
    monkeypatch.setattr(kprobes, "KPROBE_EVENTS", str(events))
    monkeypatch.setattr(probes, "RCU_EXPEDITED", str(tmp_path / "rcu_expedited"))
    return events


def _attached(tmp_path: Path) -> tuple[probes.Probes, _Log]:
    p = probes.Probes()
    log = _Log()
    p._armed.read_log(log)
    p._bpf = _Attached(tmp_path / "cleaned")
    p._events_written = list(EVENTS)
    return p, log


def test_close_detaches_and_removes_the_events_expedited(tmp_path: Path, tracefs: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    p, log = _attached(tmp_path)
    seen: list[str] = []
    real = kprobes.write_event

    def write_event(line: str) -> None:  # what rcu_expedited reads meanwhile
        seen.append((tmp_path / "rcu_expedited").read_text())
        real(line)

    monkeypatch.setattr(probes, "write_event", write_event)
    assert p.close() == []
    assert log.closed and (tmp_path / "cleaned").read_text().endswith(str(os.getpid()))
    assert tracefs.read_text() == "".join(f"-:{ev}\n" for ev in reversed(EVENTS))
    assert seen == ["1", "1"] and (tmp_path / "rcu_expedited").read_text() == "0"
    assert p.close() == []  # nothing left to do


def test_close_names_what_it_could_not_remove(tmp_path: Path, tracefs: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    p, _ = _attached(tmp_path)
    monkeypatch.setattr(kernelfs, "WRITABLE", ())  # every write refused: EPERM
    assert p.close(expedite=False) == [
        f"echo '-:{ev}' >> /sys/kernel/tracing/kprobe_events  # Operation not permitted"
        for ev in reversed(EVENTS)]
    # an event already gone (ENOENT) is no leftover
    p._events_written = list(EVENTS)
    tracefs.unlink()
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    assert p.close(expedite=False) == []


def test_the_detaching_child_waits_for_klptrace_to_exit(tmp_path: Path, tracefs: Path) -> None:
    p, _ = _attached(tmp_path)
    kmsg_file = tmp_path / "kmsg"
    kmsg_file.write_text("")
    log = kmsg.KernelLog(path=str(kmsg_file))  # a real one: its descriptor is the child's too
    p._armed.read_log(log)
    pid = p.hand_off()
    # this process drops its references only; the kernel log is closed here, not left
    # to the child, which closes what it holds of it at once and then failed to close
    # the log again, before removing anything
    assert p._bpf is None and p._events_written == []
    assert p.close() == []
    time.sleep(0.3)
    assert tracefs.read_text() == "" and not (tmp_path / "cleaned").exists()
    assert p.exited_w is not None
    os.close(p.exited_w)  # as klptrace's exit does
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "cleaned").read_text() == f"cleaned up by pid {pid}"
    assert tracefs.read_text() == "".join(f"-:{ev}\n" for ev in reversed(EVENTS))
    assert (tmp_path / "rcu_expedited").read_text() == "0\n"  # not expedited: untouched
    with pytest.raises(OSError):
        os.fstat(log._fd)  # closed in this process


def test_the_detaching_child_keeps_only_probes() -> None:
    assert probes._is_probe("anon_inode:bpf-prog") and probes._is_probe("anon_inode:bpf-map")
    assert probes._is_probe("anon_inode:[perf_event]")
    assert not probes._is_probe("pipe:[1234]") and not probes._is_probe("/dev/kmsg")
