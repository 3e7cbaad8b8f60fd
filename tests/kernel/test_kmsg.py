"""klptrace.kernel.kmsg offline: /dev/kmsg records as the kernel gives them, one a read
(here through a SOCK_SEQPACKET socket, which keeps their bounds), and the dynamic debug
and printk settings on a fake tree."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import DATA

from klptrace.kernel import kernelfs, kmsg


def _records(kernel: str) -> list[bytes]:
    """The lab guest's log (tests/data/kprobes) as /dev/kmsg records: "pri,seq,usec,flags;
    message", continuation lines for a record's dictionary (Documentation/ABI/testing/
    dev-kmsg); the kernel's own at level 6, klptrace's step lines as /dev/kmsg writes."""
    out = []
    for seq, line in enumerate((DATA / "kprobes" / kernel / "dmesg.txt").read_text()
                               .splitlines()):
        ts, msg = line[1:].split("] ", 1)
        usec = round(float(ts) * 1e6)
        out.append(f"6,{seq},{usec},-;{msg}\n".encode())
    return out


def test_parse_a_record_of_each_kind() -> None:
    recs = _records("7.3")
    assert kmsg.parse_record(recs[10]) == (
        0, 65.851906, "trace_kprobe: Failed to re-register probe pfx on acme_lp: -22")
    # a user's write (facility 1, as klptrace's step lines), with a dictionary after it
    assert kmsg.parse_record(b"12,900,66493019,-;% echo 0 > /sys/kernel/livepatch/acme_lp/"
                             b"enabled\n SUBSYSTEM=livepatch\n") == (
        1, 66.493019, "% echo 0 > /sys/kernel/livepatch/acme_lp/enabled")
    # a continuation ("c") and a record with no header at all
    assert kmsg.parse_record(b"4,901,1,c;acme_lp: more\n") == (0, 1e-06, "acme_lp: more")
    assert kmsg.parse_record(b"  not a record\n") == (0, 0.0, "not a record")
    assert kmsg.parse_record(b"x,1,y;odd header\n") == (0, 0.0, "odd header")


@pytest.fixture
def kmsg_pair(tmp_path: Path) -> Iterator[tuple[kmsg.KernelLog, socket.socket]]:
    """A KernelLog whose descriptor reads one record a read, as /dev/kmsg does; and the
    kernel's end of it."""
    f = tmp_path / "kmsg"
    f.write_text("old records\n")
    log = kmsg.KernelLog(path=str(f))  # from now: what the file held is not read
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.dup2(ours.fileno(), log._fd)
    ours.close()
    os.set_blocking(log._fd, False)
    yield log, kernel
    kernel.close()
    log.close()


def test_the_log_reads_what_came_since_the_last_read(
        kmsg_pair: tuple[kmsg.KernelLog, socket.socket]) -> None:
    log, kernel = kmsg_pair
    assert log.read() == []  # nothing yet: /dev/kmsg says EAGAIN
    recs = _records("6.1")
    for r in recs[:3]:
        kernel.send(r)
    kernel.send(b"12,99,66000000,-;% insmod klptrace_target.ko\n")
    assert log.records() == [(0, "capture: start"),
                             (0, recs[1].decode().split(";", 1)[1].rstrip("\n")),
                             (0, recs[2].decode().split(";", 1)[1].rstrip("\n")),
                             (1, "% insmod klptrace_target.ko")]
    kernel.send(recs[9])
    assert log.entries() == [
        (0, 67.548608, "trace_kprobe: Failed to re-register probe pfx on acme_lp: -2")]
    kernel.send(recs[-1])
    assert log.read() == ["klptrace_target: klptrace_target_exit"]


def test_records_overwritten_before_they_were_read_are_said_to_be_lost(
        kmsg_pair: tuple[kmsg.KernelLog, socket.socket],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log, kernel = kmsg_pair
    kernel.send(_records("7.3")[10])
    real_read = os.read
    calls: list[int] = []

    def read(fd: int, n: int) -> bytes:
        calls.append(fd)
        if len(calls) == 1:  # the reader fell behind: the kernel says EPIPE once
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))
        return real_read(fd, n)

    monkeypatch.setattr(kmsg.os, "read", read)
    assert log.read() == ["klptrace: kernel log records were overwritten",
                          "trace_kprobe: Failed to re-register probe pfx on acme_lp: -22"]


def test_a_log_read_error_is_raised(kmsg_pair: tuple[kmsg.KernelLog, socket.socket],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log, _kernel = kmsg_pair

    def read(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(kmsg.os, "read", read)
    with pytest.raises(OSError) as e:
        log.read()
    assert e.value.errno == errno.EIO


def test_the_log_ends_when_its_device_does(
        kmsg_pair: tuple[kmsg.KernelLog, socket.socket]) -> None:
    log, kernel = kmsg_pair
    kernel.send(_records("7.3")[0])
    kernel.shutdown(socket.SHUT_WR)
    assert log.read() == ["capture: start"]  # then end of file: nothing more


def test_step_lines_go_into_the_log(kmsg_pair: tuple[kmsg.KernelLog, socket.socket]) -> None:
    log, kernel = kmsg_pair
    log.write("% insmod acme_lp.ko")
    assert kernel.recv(4096) == b"% insmod acme_lp.ko"
    kernel.close()
    log.write("% rmmod acme_lp")  # nobody reads it: dropped, no error


def test_the_whole_buffer_is_read_from_the_start(tmp_path: Path) -> None:
    f = tmp_path / "kmsg"
    f.write_bytes(_records("6.1")[0])  # one record, as the first read of /dev/kmsg gives it
    log = kmsg.KernelLog(from_start=True, path=str(f))
    try:
        assert log.read() == ["capture: start"]
    finally:
        log.close()


# -- the settings: printk_devkmsg and livepatch dynamic debug, on a fake tree -----------


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    monkeypatch.setattr(kmsg, "DEVKMSG", str(tmp_path / "printk_devkmsg"))
    monkeypatch.setattr(kmsg, "DYNDBG", str(tmp_path / "control"))
    return tmp_path


def test_devkmsg_is_unlimited_meanwhile(tree: Path) -> None:
    knob = tree / "printk_devkmsg"
    knob.write_text("ratelimit\n")
    with kmsg.devkmsg_unlimited():
        assert knob.read_text() == "on"
    assert knob.read_text() == "ratelimit"
    knob.write_text("off\n")  # an admin's choice is left alone
    with kmsg.devkmsg_unlimited():
        assert knob.read_text() == "off\n"


# what dynamic_debug/control lists for kernel/livepatch/ (6.1): "file:line [module]func
# =flags format"; =p for what prints, =_ for what does not
CONTROL = (
    "kernel/livepatch/core.c:1027 [livepatch]klp_init_patch =_ \"'%s': init\\012\"\n"
    "kernel/livepatch/transition.c:183 [livepatch]klp_init_transition =p "
    "\"'%s': initializing %s transition\\012\"\n"
    "kernel/livepatch/transition.c:487 [livepatch]klp_try_complete_transition =_ "
    "\"'%s': completing %s transition\\012\"\n"
    "fs/ext4/super.c:12 [ext4]ext4_x =_ \"x\\012\"\n")


def test_livepatch_debug_turns_on_and_back_off(tree: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    control = tree / "control"
    control.write_text(CONTROL)
    queries: list[str] = []
    real = kernelfs.write

    def write(path: str, value: str, append: bool = False) -> int:
        queries.append(value)
        return real(path, value, append)

    monkeypatch.setattr(kernelfs, "write", write)
    with kmsg.livepatch_debug() as on:
        assert on and queries == ["file kernel/livepatch/* +p"]
    # put back: only the lines that did not print before, each by its file and line
    assert queries[1:] == ["file kernel/livepatch/core.c line 1027 -p",
                           "file kernel/livepatch/transition.c line 487 -p"]


def test_livepatch_debug_without_dynamic_debug(tree: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with kmsg.livepatch_debug() as on:  # no control file: CONFIG_DYNAMIC_DEBUG=n
        assert on is False
    (tree / "control").write_text(CONTROL)
    monkeypatch.setattr(kernelfs, "WRITABLE", ())  # readable, but the query is refused
    with kmsg.livepatch_debug() as on:
        assert on is False


def test_an_oops_watch_closes_its_log(kmsg_pair: tuple[kmsg.KernelLog, socket.socket]
                                      ) -> None:
    log, kernel = kmsg_pair
    watch = kmsg.OopsWatch(log)
    kernel.send(b"6,1,1,-;livepatch: enabling patch 'acme_lp'\n")
    assert watch.check() is None
    watch.close()
    with pytest.raises(OSError):
        os.fstat(log._fd)
    log._fd = os.open(os.devnull, os.O_RDONLY)  # for the fixture's own close
