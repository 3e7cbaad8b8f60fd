"""klptrace.kernel.kmod offline: the module syscalls over a stand-in for libc, what sysfs
and /proc show on a fake tree, the checks for a kernel klptrace can drive, and the actor's
loop and its ends (a child that is gone, or dies in a call)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from klptrace.errors import NotSupported
from klptrace.kernel import kernelfs, kmod


class _Libc:
    """libc's syscall(): records each call, fails with err (0: succeeds)."""

    def __init__(self, err: int = 0) -> None:
        self.err = err
        self.calls: list[tuple[Any, ...]] = []

    def syscall(self, *args: Any) -> int:
        self.calls.append(args)
        if self.err:
            ctypes.set_errno(self.err)
            return -1
        return 0


def test_load_passes_the_file_and_its_params(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ko = tmp_path / "acme_lp.ko"
    ko.write_bytes(b"\x7fELF")
    libc = _Libc()
    monkeypatch.setattr(kmod, "_libc", libc)
    assert kmod.load(str(ko), "pre_patch_ret=-19") == 0
    (nr, fd, params, flags), = libc.calls
    assert (nr, params, flags) == (313, b"pre_patch_ret=-19", 0)
    with pytest.raises(OSError):
        os.fstat(fd)  # the module's file is closed after the call
    libc.err = errno.EEXIST
    assert kmod.load(str(ko)) == errno.EEXIST
    assert kmod.load(str(tmp_path / "absent.ko")) == errno.ENOENT  # never reaches the kernel
    assert len(libc.calls) == 2


def test_unload_names_the_module_as_the_kernel_does(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc(errno.EBUSY)
    monkeypatch.setattr(kmod, "_libc", libc)
    assert kmod.unload("livepatch-foo") == errno.EBUSY
    assert libc.calls == [(176, b"livepatch_foo", os.O_NONBLOCK)]
    libc.err = 0
    assert kmod.unload("acme_lp") == 0


def test_what_sysfs_and_proc_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = tmp_path / "module"
    (sysfs / "acme_lp").mkdir(parents=True)
    (sysfs / "acme_lp" / "initstate").write_text("live\n")
    (sysfs / "going_away").mkdir()
    (sysfs / "going_away" / "refcnt").write_text("0\n")
    (sysfs / "kernel" / "parameters").mkdir(parents=True)  # built in: not a loaded module
    modules = tmp_path / "modules"
    modules.write_text("acme_lp 16384 0 - Live 0xffffffffc0a00000 (OEK)\n\n"
                       "klptrace_target 16384 1 acme_lp, Live 0xffffffffc09f0000 (OE)\n")
    monkeypatch.setattr(kmod, "MODULE_SYSFS", str(sysfs))
    monkeypatch.setattr(kmod, "PROC_MODULES", str(modules))
    assert kmod.is_loaded("acme-lp") and kmod.is_loaded("going_away")
    assert not kmod.is_loaded("kernel") and not kmod.is_loaded("absent")
    assert kmod.loaded_modules() == ["acme_lp", "klptrace_target"]
    monkeypatch.setattr(kmod, "PROC_MODULES", str(tmp_path / "absent"))
    assert kmod.loaded_modules() == []


def test_livepatches_and_their_attributes(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmod, "LIVEPATCH_SYSFS", tmp_path / "absent")
    assert kmod.patches() == [] and kmod.patch_attr("acme_lp", "enabled") is None
    for name, enabled in (("zeta_lp", "1"), ("acme_lp", "0")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "enabled").write_text(f"{enabled}\n")
    monkeypatch.setattr(kmod, "LIVEPATCH_SYSFS", tmp_path)
    assert kmod.patches() == ["acme_lp", "zeta_lp"]
    assert kmod.is_patch("acme-lp") and not kmod.is_patch("other")
    assert kmod.patch_attr("zeta_lp", "enabled") == "1"
    assert kmod.patch_attr("zeta_lp", "transition") is None


def test_what_keeps_klptrace_from_the_kernel(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmod.os, "geteuid", lambda: 1000)
    problem = kmod.unsupported()
    assert isinstance(problem, NotSupported) and problem.hint == "run it with sudo"
    assert problem.message.startswith("klptrace needs root")
    monkeypatch.setattr(kmod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(kmod, "LIVEPATCH_SYSFS", tmp_path / "livepatch")
    problem = kmod.unsupported()
    assert problem is not None and problem.message == (
        "this kernel has no livepatch support (/sys/kernel/livepatch is missing)")
    (tmp_path / "livepatch").mkdir()
    monkeypatch.setattr(kmod, "KPROBE_EVENTS", str(tmp_path / "kprobe_events"))
    problem = kmod.unsupported()
    assert problem is not None and problem.message == (
        f"this kernel has no kprobe events ({tmp_path / 'kprobe_events'} is missing)")
    assert kmod.unsupported(kprobes=False) is None  # `klptrace stall` needs none
    (tmp_path / "kprobe_events").write_text("")
    assert kmod.unsupported() is None


def test_write_goes_through_kernelfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    knob = tmp_path / "enabled"
    knob.write_text("1\n")
    assert kmod.write(str(knob), "0") == errno.EPERM  # not a file klptrace writes
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    assert kmod.write(str(knob), "0") == 0 and knob.read_text() == "0"


# -- the actor ------------------------------------------------------------------------


def test_the_actor_loop_answers_each_request_in_turn(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the loop itself, in this process: requests in, [seq, errno] out, until EOF
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    knob = tmp_path / "knob"
    knob.write_text("0")
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    os.write(req_w, (json.dumps([1, "write", str(knob), "1"]) + "\n"
                     + json.dumps([2, "load", str(tmp_path / "absent.ko"), ""]) + "\n").encode())
    os.close(req_w)
    kmod._serve(req_r, rep_w)
    os.close(rep_w)
    with os.fdopen(rep_r, "rb") as replies:
        assert [json.loads(line) for line in replies] == [[1, 0], [2, errno.ENOENT]]
    assert knob.read_text() == "1"


def test_an_actor_that_is_gone_is_said_so() -> None:
    actor = kmod.Actor()
    try:
        os.kill(actor.pid, signal.SIGKILL)
        os.waitpid(actor.pid, 0)
        with pytest.raises(kmod.Abandoned) as e:
            actor.write("/sys/kernel/livepatch/acme_lp/enabled", "0", timeout=5)
        assert e.value.message == ("`echo 0 > /sys/kernel/livepatch/acme_lp/enabled`: "
                                   f"klptrace's kernel actor (pid {actor.pid}) is gone")
        assert actor.wedge.stuck == "`echo 0 > /sys/kernel/livepatch/acme_lp/enabled`"
        assert actor.wedge.reason.startswith("the kernel never returned from `echo 0")
    finally:
        actor.close()  # stuck: not reaped again


def test_an_actor_that_dies_in_a_call_is_said_so(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelfs, "WRITABLE", (f"{tmp_path}/*",))
    fifo = tmp_path / "enabled"
    os.mkfifo(fifo)  # the write sleeps until someone reads it
    actor = kmod.Actor()
    killed: list[float] = []

    def idle() -> None:
        if not killed:  # as an oops kills the task in the kernel
            os.kill(actor.pid, signal.SIGKILL)
            killed.append(time.monotonic())

    try:
        with pytest.raises(kmod.Abandoned) as e:
            actor.write(str(fifo), "0", timeout=30, idle=idle)
        assert e.value.message == (f"klptrace's kernel actor (pid {actor.pid}) died in the "
                                   "kernel")
        assert e.value.hint == "see the kernel log for an oops"
        assert actor.wedge.stuck == f"`echo 0 > {fifo}`"
        with pytest.raises(kmod.Abandoned, match="not tried: the kernel never returned from"):
            actor.unload("acme_lp", timeout=1)
    finally:
        actor.close()
        os.waitpid(actor.pid, 0)


def test_the_actor_s_methods_say_their_calls_as_a_shell_would(tmp_path: Path) -> None:
    actor = kmod.Actor()
    try:
        assert actor.load(str(tmp_path / "absent.ko"), timeout=10) == errno.ENOENT
        # what sysfs shows is read in this process, at once
        assert actor.is_loaded("klptrace_absent_module_x") is False
    finally:
        actor.close()
    assert kmod._AS_COMMAND["load"]("/m/acme_lp.ko", "a=1") == "insmod /m/acme_lp.ko a=1"
    assert kmod._AS_COMMAND["load"]("/m/acme_lp.ko") == "insmod /m/acme_lp.ko"
    assert kmod._AS_COMMAND["unload"]("acme_lp") == "rmmod acme_lp"
    assert kmod._AS_COMMAND["write"]("/sys/x", "0") == "echo 0 > /sys/x"
