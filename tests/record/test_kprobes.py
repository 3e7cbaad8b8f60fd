"""klptrace.record.kprobes offline: what the kernel says about the kprobes on a module
(saved from the lab guest), and the kprobe events klptrace writes."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from util import DATA

from klptrace.events import Event, EventKind
from klptrace.kernel import kernelfs
from klptrace.record import kprobes
from klptrace.results import Probe

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
    listed = kprobes.registered_kprobes((KPROBES / kernel / "list-loaded.txt").read_text())
    assert listed == {("k", "acme_lp", "acme_prepare"): 1, ("r", "acme_lp", "acme_prepare"): 1}


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_the_listing_of_a_freed_module_names_nothing(kernel: str) -> None:
    text = (KPROBES / kernel / "list-gone.txt").read_text()
    assert "[GONE]" in text and kprobes.registered_kprobes(text) == {}


def test_the_kernels_reasons_for_not_arming() -> None:
    assert kprobes.rearm_failures(_log("7.3")) == {
        "pfx": "Could not probe notrace function __pfx_acme_prepare [acme_lp]; "
               "Failed to re-register probe pfx on acme_lp: -22 (EINVAL)",
        "nosuch": "Failed to re-register probe nosuch on acme_lp: -2 (ENOENT)"}
    # 6.1's gcc-12 build has no __pfx_ symbol; the line before is no reason
    assert kprobes.rearm_failures(_log("6.1")) == {
        "pfx": "Failed to re-register probe pfx on acme_lp: -2 (ENOENT)",
        "nosuch": "Failed to re-register probe nosuch on acme_lp: -2 (ENOENT)"}


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_each_deferred_probe_logs_one_line_when_registered(kernel: str) -> None:
    log = _log(kernel)
    before_load = log[:next(i for i, m in enumerate(log) if m.startswith("klptrace_target"))]
    assert [m for m in before_load if m.startswith(kprobes.DEFERRED_MESSAGE)] == [
        before_load[1]] * 4


def _probe(event: str, kind: str, symbol: str) -> kprobes.ModuleProbe:
    st = Probe(f"kprobe:acme_lp:{symbol}", f"acme_lp:{symbol}", True)
    return kprobes.ModuleProbe(event, kind, "acme_lp", symbol, st)


def test_judge_from_the_log_and_the_listing() -> None:
    listed = kprobes.registered_kprobes((KPROBES / "7.3" / "list-loaded.txt").read_text())
    failed = kprobes.rearm_failures(_log("7.3"))
    good, goodr = _probe("good", "k", "acme_prepare"), _probe("goodr", "r", "acme_prepare")
    pfx, nosuch = _probe("pfx", "k", "__pfx_acme_prepare"), _probe("nosuch", "k", "x")
    for mp in (good, goodr, pfx, nosuch):
        kprobes.judge(mp, failed.get(mp.event), listed)
    assert (good.status.ok, good.status.armed) == (goodr.status.ok, goodr.status.armed) == (
        True, True)
    assert (pfx.status.ok, pfx.status.armed) == (nosuch.status.ok, nosuch.status.armed) == (
        False, False)
    assert "Could not probe notrace function __pfx_acme_prepare" in pfx.status.reason
    assert pfx.status.to_json()["armed"] is False


def test_judge_without_a_reason_or_a_trusted_listing() -> None:
    # missing from a trusted listing, and the log said nothing: still not armed
    lost = _probe("lost", "k", "acme_activate")
    kprobes.judge(lost, None, kprobes.registered_kprobes(""))
    assert lost.status.armed is False and "not in /sys/kernel/debug/kprobes/list" in (
        lost.status.reason)
    # no trusted listing (the module was freed before it was read), nothing logged:
    # nothing is known, so nothing is claimed
    unknown = _probe("unknown", "k", "acme_activate")
    kprobes.judge(unknown, None, None)
    assert (unknown.status.ok, unknown.status.armed) == (True, None)
    assert "armed" not in unknown.status.to_json()


def test_event_names_are_ones_the_kernel_accepts() -> None:
    assert kprobes.event_name("p", 0, 3, "acme_prepare.cold") == "p0_3_acme_prepare_cold"
    assert len(kprobes.event_name("r", 1, 2, "x" * 80)) == 60


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_armed_decides_from_the_saved_log_and_listing(kernel: str) -> None:
    listed = kprobes.registered_kprobes((KPROBES / kernel / "list-loaded.txt").read_text())
    failed = kprobes.rearm_failures(_log(kernel))
    good, pfx = _probe("good", "k", "acme_prepare"), _probe("pfx", "k", "__pfx_acme_prepare")
    assert kprobes.armed(good, failed.get("good"), listed) == (True, "")
    verdict, why = kprobes.armed(pfx, failed.get("pfx"), listed)
    assert verdict is False and why.startswith(
        "the kernel did not arm it when acme_lp came: ")
    assert why.endswith(failed["pfx"])
    # what the module's freeing leaves in the listing says nothing of it
    gone = kprobes.registered_kprobes((KPROBES / kernel / "list-gone.txt").read_text())
    assert kprobes.armed(good, None, gone)[0] is False
    assert kprobes.armed(good, None, None) == (None, "")


def test_the_first_reason_stays() -> None:
    mp = _probe("pfx", "k", "__pfx_acme_prepare")
    kprobes.judge(mp, "first", None)
    kprobes.judge(mp, "second", None)
    assert mp.status.reason.endswith(": first") and mp.status.armed is False
    kprobes.judge(mp, None, kprobes.registered_kprobes(
        (KPROBES / "7.3" / "list-loaded.txt").read_text()))
    assert (mp.status.ok, mp.status.armed) == (False, False)


# -- the check as the recording goes on, on a fake debugfs and kernel log ------------


class _Log:
    """The kernel log as kmsg.KernelLog gives it: what came since the last read."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False

    def read(self) -> list[str]:
        out, self.lines = self.lines, []
        return out

    def close(self) -> None:
        self.closed = True


def _module_event(kind: EventKind, module: str = "acme_lp") -> Event:
    return Event(kind, 1, object=module)


def _check(tmp_path: Path, kernel: str) -> tuple[kprobes.ArmedCheck, _Log, list[Any]]:
    listing = tmp_path / "list"
    listing.write_text((KPROBES / kernel / "list-loaded.txt").read_text())
    check = kprobes.ArmedCheck(str(listing))
    log = _Log()
    check.read_log(log)
    mps = [_probe("good", "k", "acme_prepare"), _probe("goodr", "r", "acme_prepare"),
           _probe("pfx", "k", "__pfx_acme_prepare"), _probe("nosuch", "k", "x")]
    for mp in mps:
        check.add(mp)
    return check, log, mps


@pytest.mark.parametrize("kernel", ["6.1", "7.3"])
def test_a_module_s_probes_are_checked_once_its_init_is_read(tmp_path: Path,
                                                             kernel: str) -> None:
    check, log, (good, goodr, pfx, nosuch) = _check(tmp_path, kernel)
    messages = _log(kernel)
    came = next(i for i, m in enumerate(messages) if m.startswith("acme_lp:"))
    log.lines = messages[:came]  # setup: the deferred probes, nothing about acme_lp yet
    check.check(lambda: None)
    assert good.status.armed is None  # nothing to check: acme_lp has not come
    check.saw(_module_event(EventKind.MODULE_COMING))
    check.saw(_module_event(EventKind.MODULE_INIT, "other"))  # not a traced module
    log.lines = messages[came:]
    check.saw(_module_event(EventKind.MODULE_INIT))
    consumed: list[int] = []
    check.check(lambda: consumed.append(1))
    assert consumed == [1]  # the events sent before the listing was read, delivered
    assert (good.status.ok, good.status.armed) == (goodr.status.ok, goodr.status.armed) == (
        True, True)
    assert (pfx.status.ok, pfx.status.armed, nosuch.status.armed) == (False, False, False)
    assert kprobes.rearm_failures(messages)["pfx"] in pfx.status.reason
    check.close()
    assert log.closed
    check.check(lambda: None)  # nothing pending: nothing read


def test_a_module_freed_before_its_listing_was_read_is_not_judged_by_it(
        tmp_path: Path) -> None:
    check, _, (good, *_) = _check(tmp_path, "7.3")
    (tmp_path / "list").write_text((KPROBES / "7.3" / "list-gone.txt").read_text())
    check.saw(_module_event(EventKind.MODULE_COMING))
    check.saw(_module_event(EventKind.MODULE_INIT))
    # the module was freed meanwhile: its event comes with the ring buffer's next batch
    check.check(lambda: check.saw(_module_event(EventKind.MODULE_FREE)))
    assert (good.status.ok, good.status.armed) == (True, None)  # nothing claimed


def test_no_listing_and_no_log_claims_nothing(tmp_path: Path) -> None:
    check = kprobes.ArmedCheck(str(tmp_path / "absent"))
    mp = _probe("good", "k", "acme_prepare")
    check.add(mp)
    check.saw(_module_event(EventKind.MODULE_INIT))
    check.check(lambda: None)
    assert (mp.status.ok, mp.status.armed) == (True, None)
    check.close()  # no log to close


# -- the kprobe events themselves, on a fake tracefs ----------------------------------


@pytest.fixture
def tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    events = tmp_path / "kprobe_events"
    events.write_text("")
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    monkeypatch.setattr(kprobes, "KPROBE_EVENTS", str(events))
    return events


def test_events_are_appended_as_the_kernel_takes_them(tracefs: Path) -> None:
    kprobes.write_event("p:klptrace/p0_0_acme_prepare acme_lp:acme_prepare")
    kprobes.write_event("-:klptrace/p0_0_acme_prepare")
    assert tracefs.read_text() == ("p:klptrace/p0_0_acme_prepare acme_lp:acme_prepare\n"
                                   "-:klptrace/p0_0_acme_prepare\n")


def test_a_refused_event_raises_the_kernel_s_errno(tracefs: Path) -> None:
    tracefs.unlink()  # no kprobe events in this kernel
    with pytest.raises(OSError) as e:
        kprobes.write_event("-:klptrace/gone")
    assert e.value.errno == errno.ENOENT


def test_leftover_events_are_klptrace_s_only(tracefs: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # kprobe_events as tracefs shows it: other tools' events stay theirs
    tracefs.write_text("p:klptrace/p0_0_acme_prepare acme_lp:acme_prepare\n"
                       "r:kprobes/other vfs_read\n\n"
                       "r:klptrace/r0_0_acme_prepare acme_lp:acme_prepare\n")
    assert kprobes.leftover_events() == ["p:klptrace/p0_0_acme_prepare",
                                         "r:klptrace/r0_0_acme_prepare"]
    monkeypatch.setattr(kprobes, "KPROBE_EVENTS", str(tracefs.parent / "absent"))
    assert kprobes.leftover_events() == []


def test_event_names_replace_what_the_kernel_refuses() -> None:
    assert kprobes.event_name("p", 2, 0, "a-b") == "p2_0_a_b"
