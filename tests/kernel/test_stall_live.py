"""kernel/stall.py, the live reader, offline: a fake /proc under tmp_path stands in."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace.kernel import stall as live
from klptrace.stall_report import SchedPath

#: lines of /proc/kallsyms as root reads them (without root the addresses are 0)
_V616 = ("ffffffff81123450 T __klp_sched_try_switch\n"
         "ffffffff82a00010 D klp_sched_try_switch_key\n")
_V64 = _V616 + ("ffffffff81123500 t klp_cond_resched\n"
                "ffffffff81123600 T sched_dynamic_klp_enable\n")
_V61 = "ffffffff81000000 T klp_enable_patch\n"


@pytest.mark.parametrize(("kallsyms", "path"), [
    (_V616, SchedPath.SCHEDULE), (_V64, SchedPath.COND_RESCHED), (_V61, SchedPath.NONE),
    # a module's own symbol of the same name is not the kernel's
    ("0000000000000000 t __klp_sched_try_switch\t[some_module]\n", SchedPath.NONE),
    (None, SchedPath.UNKNOWN),
])
def test_the_scheduler_path_from_kallsyms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          kallsyms: str | None, path: SchedPath) -> None:
    if kallsyms is not None:
        (tmp_path / "kallsyms").write_text("0000000000000000 A fixed_percpu_data\n"
                                           + kallsyms + "ffffffff83000000 T _etext\n")
    monkeypatch.setattr(live, "PROC", str(tmp_path))
    assert live.sched_path() == path


def _task(proc: Path, tid: int, comm: str, state: str, flags: int) -> None:
    d = proc / str(tid) / "task" / str(tid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{tid} ({comm}) {state} 2 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 "
                            "1 0 152 0 0\n")
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text(f"Name:\t{comm}\nState:\t{state} (x)\n"
                              "voluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t1\n")
    (d / "stack").write_text("[<0>] pipe_read+0x1/0x2\n[<0>] f+0x3f/0x70 [m]\n")


def test_a_task_s_kind_and_sleep_from_proc(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _task(tmp_path, 40, "kthreadd-ish", "S", 0x00200000)  # PF_KTHREAD
    _task(tmp_path, 41, "cat", "D", 0x00400100)  # PF_EXITING-free flags of a user task
    monkeypatch.setattr(live, "PROC", str(tmp_path))
    k, u = live.task_info(40, 40, {"f"}), live.task_info(41, 41, {"f"})
    assert (k.kind, k.sleep, k.kthread, k.reason, k.function) == (
        "kthread", "interruptible", True, "sleeping on function", "f")
    assert (u.kind, u.sleep, u.kthread) == ("user", "uninterruptible", False)



def test_a_comm_that_is_not_utf8_is_read_not_raised(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _task(tmp_path, 42, "x", "S", 0)
    d = tmp_path / "42" / "task" / "42"
    for name in ("comm", "stat"):  # a task may name itself with any bytes
        (d / name).write_bytes((d / name).read_bytes().replace(b"x", b"\xff\xfe"))
    monkeypatch.setattr(live, "PROC", str(tmp_path))
    t = live.task_info(42, 42, {"f"})
    assert t.comm == "\ufffd\ufffd" and t.kind == "user" and t.function == "f"
