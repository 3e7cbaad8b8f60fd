"""The runner offline: a fake recorder and a fake kernel stand in for BPF and the syscalls."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from klptrace import runner, scenario
from klptrace.events import Event, EventKind
from klptrace.kernel import kmod
from klptrace.kernel.kmod import Abandoned
from klptrace.kernel.kmsg import Oops
from klptrace.kernel.wedge import Wedge
from klptrace.results import Recording


class FakeRec:
    """Records klptrace's own marks; the 'kernel' sends no events."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.polls = 0

    def mark(self, kind: EventKind, detail: str, ret: int | None = None) -> Event:
        ev = Event(kind, time.monotonic_ns(), comm="klptrace", detail=detail, ret=ret)
        self.events.append(ev)
        return ev

    def poll(self, timeout_ms: int = 50) -> None:
        self.polls += 1

    def now(self) -> int:
        return time.monotonic_ns()

    def recording(self, start_ns: int = 0, end_ns: int | None = None) -> Recording:
        end = end_ns if end_ns is not None else time.monotonic_ns()
        return Recording([e for e in self.events if start_ns <= e.ts_ns <= end])

    def lost(self) -> int:
        return 0


class FakeKernel:
    """Modules and livepatches as sysfs shows them. A module named *lp* is a livepatch:
    enabled on load, gone from sysfs once disabled (the kernel frees the patch)."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.patches: dict[str, dict[str, str]] = {}
        self.refuse: dict[str, int] = {}  # module -> errno of its load
        self.stall: set[str] = set()  # livepatches whose transition never ends
        self.calls: list[str] = []
        self.wedge = Wedge()
        self.hang: str | None = None  # the call that never returns
        self.params: dict[tuple[str, str], str] = {}  # (module, parameter) -> what it reads

    def _enter(self, what: str, idle: Callable[[], None] | None = None) -> None:
        self.calls.append(what)
        if self.hang and what.startswith(self.hang):
            if idle is not None:
                idle()  # the runner's oops watch may end the wait
            self.wedge.never_returned(f"`{what}`")
            raise Abandoned(f"`{what}` did not return within 1 s: it is left waiting")

    def load(self, path: str, params: str = "", **kw: Any) -> int:
        name = path.rsplit("/", 1)[-1].removesuffix(".ko")
        self._enter(f"insmod {name}", kw.get("idle"))
        if name in self.refuse:
            return self.refuse[name]
        self.loaded.append(name)
        if "lp" in name:
            self.patches[name] = {"enabled": "1",
                                  "transition": "1" if name in self.stall else "0"}
        return 0

    def unload(self, name: str, **kw: Any) -> int:
        self._enter(f"rmmod {name}", kw.get("idle"))
        if name not in self.loaded:
            return errno.ENOENT
        if name in self.patches:
            return errno.EBUSY
        self.loaded.remove(name)
        return 0

    def write(self, path: str, value: str, **kw: Any) -> int:
        self._enter(f"echo {value} > {path}", kw.get("idle"))
        parts = path.split("/")
        if parts[:4] == ["", "sys", "kernel", "livepatch"] and parts[-1] == "enabled":
            patch = parts[4]
            if patch not in self.patches:
                return errno.ENOENT
            if value == "0":  # reversed or disabled: the core frees the patch
                del self.patches[patch]
            return 0
        return 0

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded

    def is_patch(self, name: str) -> bool:
        return name in self.patches

    def patch_attr(self, patch: str, attr: str) -> str | None:
        return self.patches.get(patch, {}).get(attr)

    def param(self, module: str, name: str) -> str | None:
        return self.params.get((module, name))


class FakeWatch:
    def __init__(self) -> None:
        self.oops: Oops | None = None

    def check(self) -> Oops | None:
        return self.oops


def _sc(steps: str, expect: str) -> scenario.Scenario:
    return scenario.parse(f'id = "t"\ntitle = "t"\ndoc = "why"\nsteps = [{steps}]\n'
                          f'expect = """{expect}"""\n', "test.toml")


def _runner(kernel: FakeKernel, watch: FakeWatch | None = None,
            timeout: float = 5.0) -> tuple[runner.Runner, FakeRec]:
    rec = FakeRec()
    return runner.Runner(rec, "/mods", kernel, watch or FakeWatch(),  # type: ignore[arg-type]
                         timeout_s=timeout, snapshot=lambda p, e: None), rec


LOAD_DISABLE_UNLOAD = ('{ load = "tgt" }, { load = "lp" }, { disable = "lp" }, '
                       '{ unload = "lp" }, { unload = "tgt" }')
STEPS = """
% insmod tgt.ko
% insmod lp.ko
% echo 0 > /sys/kernel/livepatch/lp/enabled
% rmmod lp
% rmmod tgt
"""


def test_steps_run_in_order_and_pass_on_their_expectation() -> None:
    k = FakeKernel()
    run, _rec = _runner(k)
    r = run.run(_sc(LOAD_DISABLE_UNLOAD, STEPS))
    assert r.status == "pass", r.verdict.explanation
    assert k.calls == ["insmod tgt", "insmod lp", "echo 0 > /sys/kernel/livepatch/lp/enabled",
                       "rmmod lp", "rmmod tgt"]
    assert r.verdict.recorded == [line for line in STEPS.splitlines() if line]
    assert not k.loaded and not run.loaded


def test_a_refused_load_is_a_step_result_and_the_scenario_goes_on() -> None:
    k = FakeKernel()
    k.refuse["lp"] = errno.ENODEV
    run, _rec = _runner(k)
    r = run.run(_sc('{ load = "lp" }, { load = "tgt" }, { unload = "tgt" }',
                    "% insmod lp.ko\ninsmod: ERROR: could not insert module lp.ko: "
                    "No such device\n% insmod tgt.ko\n% rmmod tgt\n"))
    assert r.status == "pass", r.verdict.explanation
    assert "lp" not in run.loaded and not k.loaded


def test_a_transition_that_never_ends_times_out_and_is_cleaned_up() -> None:
    k = FakeKernel()
    k.stall.add("lp")
    run, _rec = _runner(k, timeout=0.3)
    r = run.run(_sc('{ load = "tgt" }, { load = "lp" }', "% insmod tgt.ko\n% insmod lp.ko\n"))
    assert r.status == "error"
    assert "transition still reads 1" in r.verdict.explanation
    assert "klptrace stall lp" in r.verdict.explanation
    # cleanup disabled the patch (the reversal), then unloaded both, the latest first
    assert k.calls[2:] == ["echo 0 > /sys/kernel/livepatch/lp/enabled", "rmmod lp",
                           "rmmod tgt"]
    assert not k.loaded
    assert "% echo 0 > /sys/kernel/livepatch/lp/enabled" in r.verdict.recorded


def test_what_cleanup_cannot_remove_is_named() -> None:
    k = FakeKernel()
    run, _rec = _runner(k, timeout=0.3)
    k.unload = lambda name, **kw: errno.EBUSY  # type: ignore[method-assign]
    r = run.run(_sc('{ load = "tgt" }', "% insmod tgt.ko\n"))
    assert r.status == "error"
    assert any("tgt is still loaded" in p and "rmmod tgt" in p for p in r.verdict.problems)


def test_a_signal_in_a_step_still_cleans_up() -> None:
    k = FakeKernel()
    run, _rec = _runner(k)
    real_write = k.write

    def write_then_signal(path: str, value: str, **kw: Any) -> int:
        real_write(path, value, **kw)
        raise KeyboardInterrupt  # SIGINT while the disable step waits

    k.write = write_then_signal  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run.run(_sc(LOAD_DISABLE_UNLOAD, STEPS))
    assert k.calls[-2:] == ["rmmod lp", "rmmod tgt"]  # the cleanup ran before it went on
    assert not k.loaded and not run.loaded


def test_an_oops_ends_the_scenario_and_the_kernel_is_left_alone() -> None:
    k = FakeKernel()
    watch = FakeWatch()
    run, _rec = _runner(k, watch)
    k.stall.add("lp")  # the transition never completes: the kworker died in post_patch
    oops = Oops(["BUG: kernel NULL pointer dereference, address: 0000000000000000",
                 "Oops: 0002 [#1] PREEMPT SMP NOPTI",
                 "CPU: 1 PID: 101 Comm: kworker/1:2 Tainted: G OE K 6.1.0-57-amd64 #1",
                 "RIP: 0010:lp_post_patch+0x71/0x7c [lp]",
                 "---[ end trace 0000000000000000 ]---"], True)
    real_load = k.load

    def load_then_oops(path: str, params: str = "", **kw: Any) -> int:
        err = real_load(path, params, **kw)
        if path.endswith("/lp.ko"):
            watch.oops = oops
        return err

    k.load = load_then_oops  # type: ignore[method-assign]
    r = run.run(_sc('{ load = "tgt" }, { load = "lp" }, { unload = "tgt" }',
                    "% insmod tgt.ko\n% insmod lp.ko\n% rmmod tgt\n"))
    assert r.status == "error"
    assert r.verdict.explanation.startswith(
        "the kernel oopsed during `insmod lp.ko`: BUG: kernel NULL pointer dereference")
    assert "RIP: 0010:lp_post_patch+0x71/0x7c [lp]" in r.verdict.problems
    assert r.oops == oops.lines and r.to_json()["oops"] == oops.lines
    assert run.wedged == "the kernel oopsed"
    assert k.calls == ["insmod tgt", "insmod lp"]  # nothing after the oops, no cleanup call
    assert any("lp is still loaded (the kernel oopsed): reboot" in p for p in r.verdict.problems)


def test_a_call_that_never_returns_wedges_the_kernel() -> None:
    k = FakeKernel()
    k.hang = "echo 0"
    run, _rec = _runner(k)
    r = run.run(_sc(LOAD_DISABLE_UNLOAD, STEPS))
    assert r.status == "error"
    assert "did not return within" in r.verdict.explanation
    assert run.wedged.startswith("the kernel never returned from `echo 0 > ")
    assert k.calls == ["insmod tgt", "insmod lp", "echo 0 > /sys/kernel/livepatch/lp/enabled"]
    assert {"tgt", "lp"} == set(k.loaded)  # left, and named
    assert sum("is still loaded" in p for p in r.verdict.problems) == 2


def test_a_module_whose_task_died_in_the_kernel_is_named_by_the_oops() -> None:
    # the actor died in finit_module (its own pre_patch oopsed): the oops explains it
    k = FakeKernel()
    watch = FakeWatch()
    run, _rec = _runner(k, watch)

    def died(path: str, params: str = "", **kw: Any) -> int:
        watch.oops = Oops(["Oops: 0002 [#1] SMP", "RIP: 0010:lp_pre_patch+0x5/0x9 [lp]"], True)
        k.wedge.never_returned("`insmod lp.ko`")
        raise Abandoned("`insmod lp.ko`: klptrace's kernel actor (pid 7) died in the kernel")

    k.load = died  # type: ignore[method-assign]
    r = run.run(_sc('{ load = "lp" }', "% insmod lp.ko\n"))
    assert r.status == "error"
    assert "the kernel oopsed during `insmod lp.ko`: Oops: 0002 [#1] SMP" in \
        r.verdict.explanation
    assert run.wedged == "the kernel oopsed"


def test_a_module_file_with_dashes_is_named_as_the_kernel_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kpatch's livepatch-foo.ko is the module livepatch_foo (kbuild's KBUILD_MODNAME):
    # its file keeps the dash, its sysfs directories and delete_module(2) do not
    r, _rec = _runner(FakeKernel())
    assert r.ko("livepatch-foo") == "/mods/livepatch-foo.ko"
    assert runner.patch_file("livepatch-foo", "enabled") == \
        "/sys/kernel/livepatch/livepatch_foo/enabled"
    assert runner.param_file("my-mod", "a-b") == "/sys/module/my_mod/parameters/a_b"
    (tmp_path / "livepatch_foo").mkdir()
    (tmp_path / "livepatch_foo" / "enabled").write_text("1\n")
    monkeypatch.setattr(kmod, "LIVEPATCH_SYSFS", tmp_path)
    assert kmod.is_patch("livepatch-foo") and kmod.patch_attr("livepatch-foo", "enabled") == "1"


def test_a_livepatch_that_stays_registered_is_named_as_the_kernel_names_it() -> None:
    # a disable that the kernel takes without freeing the patch (still in transition):
    # cleanup gives up at its timeout, and its hint names the patch's sysfs file as
    # the kernel does (kpatch's livepatch-foo.ko is livepatch_foo there)
    class Stays(FakeKernel):
        def write(self, path: str, value: str, **kw: Any) -> int:
            self.calls.append(f"echo {value} > {path}")
            return 0

    k = Stays()
    k.patches["livepatch_foo"] = {"enabled": "1", "transition": "1"}
    k.loaded.append("livepatch-foo")
    k.is_patch = lambda name: scenario.kernel_name(name) in k.patches  # type: ignore[method-assign]
    k.patch_attr = lambda patch, attr: k.patches.get(  # type: ignore[method-assign]
        scenario.kernel_name(patch), {}).get(attr)
    run, _rec = _runner(k, timeout=0.3)
    run.loaded.append("livepatch-foo")
    left = run.cleanup()
    assert left == ["livepatch livepatch-foo is still registered\n"
                    "  hint: echo 0 > /sys/kernel/livepatch/livepatch_foo/enabled; then rmmod "
                    "livepatch-foo"]
    assert k.calls[0] == "echo 0 > /sys/kernel/livepatch/livepatch_foo/enabled"
    assert not run.wedged


class FakeReader:
    """A background reader: exits with status once `exits` is set (or when killed)."""

    def __init__(self, path: str) -> None:
        self.path, self.pid, self.status, self.exits, self.killed = path, 4242, 0, False, False

    def poll(self) -> int | None:
        return self.status if self.exits else None

    def kill(self) -> None:
        self.killed, self.exits, self.status = True, True, -9

    def wait(self, timeout: float | None = None) -> int:
        assert self.exits
        return self.status


def _spawning(kernel: FakeKernel, timeout: float = 5.0) -> tuple[runner.Runner, FakeRec,
                                                                  list[FakeReader]]:
    readers: list[FakeReader] = []

    def spawn(path: str) -> FakeReader:
        readers.append(FakeReader(path))
        return readers[-1]

    rec = FakeRec()
    run = runner.Runner(rec, "/mods", kernel, FakeWatch(),  # type: ignore[arg-type]
                        timeout_s=timeout, snapshot=lambda p, e: None,
                        spawn=spawn)  # type: ignore[arg-type]
    return run, rec, readers


READER = ('{ load = "tgt" }, { spawn = "r", read = "tgt/file" }, '
          '{ wait_param = "tgt", param = "sleepers", value = "1" }, { reap = "r" }, '
          '{ unload = "tgt" }')
READER_LINES = """
% insmod tgt.ko
% cat /sys/kernel/debug/tgt/file & r=$!
% wait $r
% rmmod tgt
"""


def test_a_reader_is_spawned_waited_for_and_reaped() -> None:
    k = FakeKernel()
    k.params[("tgt", "sleepers")] = "1"
    run, _rec, readers = _spawning(k)
    [sc] = [_sc(READER, READER_LINES)]
    orig = run.reap

    def reap(name: str) -> None:
        readers[0].exits = True  # the module released it
        orig(name)

    run.reap = reap  # type: ignore[method-assign]
    r = run.run(sc)
    assert r.status == "pass", r.verdict.explanation
    assert [x.path for x in readers] == ["/sys/kernel/debug/tgt/file"]
    assert not readers[0].killed and not run.readers


def test_a_reader_left_running_is_killed_before_its_module_goes() -> None:
    k = FakeKernel()
    run, _rec, readers = _spawning(k, timeout=0.2)
    r = run.run(_sc('{ load = "tgt" }, { spawn = "r", read = "tgt/file" }, '
                    '{ wait_param = "tgt", param = "sleepers", value = "1" }',
                    "% insmod tgt.ko\n% cat /sys/kernel/debug/tgt/file & r=$!\n"))
    assert r.status == "error"
    assert "/sys/module/tgt/parameters/sleepers does not read 1 after 0 s" in r.step_error
    assert readers[0].killed and not k.loaded and not run.readers


def test_a_reader_that_fails_is_a_step_error() -> None:
    k = FakeKernel()
    k.params[("tgt", "sleepers")] = "1"
    run, _rec, _readers = _spawning(k)
    readers_exit = FakeReader.poll

    def poll(self: FakeReader) -> int | None:
        self.exits, self.status = True, 1
        return readers_exit(self)

    FakeReader.poll = poll  # type: ignore[method-assign]
    try:
        r = run.run(_sc(READER, READER_LINES))
    finally:
        FakeReader.poll = readers_exit  # type: ignore[method-assign]
    assert r.status == "error" and "the reader $r exited with status 1" in r.step_error


def test_wait_blocked_waits_for_a_try_that_finds_the_task() -> None:
    blocked = [Event(EventKind.TRANSITION_TRY, 1, patch="p", ret=15),
               Event(EventKind.TASK_BLOCKED, 2, comm="cat", patch="p", ret=-98)]
    assert runner.blocked(blocked, "p", "cat") and runner.blocked(blocked, "p", "cat", 16)
    assert not runner.blocked(blocked, "p", "cat", 17)
    assert not runner.blocked(blocked, "p", "dd") and not runner.blocked(blocked, "q", "cat")
    assert not runner.blocked(blocked[1:], "p", "cat")  # no try began after the step
    k = FakeKernel()
    run, rec = _runner(k, timeout=0.2)
    r = run.run(_sc('{ wait_blocked = "p", task = "cat", try = 17 }', "% x"))
    assert "no try of p's transition found cat not switched at try 17 or later" in r.step_error
    assert rec.polls > 0
