"""run, run --vm, a kernel matrix and trace, offline: BPF, the kernel and the guest are fakes.

The fakes stand at the edges klptrace has (probes.Probes, the kernel actor, the kernel
log, vm.run, the kernel fetch), so everything between them is the real code.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from test_runner import FakeKernel

from klptrace import cli
from klptrace.commands import matrix
from klptrace.events import Event, EventKind
from klptrace.guest import boot, stream
from klptrace.kernel import kmod, kmsg
from klptrace.lab import build, kernels, vm
from klptrace.oops import Oops
from klptrace.record import probes
from klptrace.results import Probe

STEPS = '{ load = "tgt" }, { load = "lp" }, { disable = "lp" }, { unload = "lp" }, ' \
        '{ unload = "tgt" }'
EXPECT = ("% insmod tgt.ko\n% insmod lp.ko\n% echo 0 > /sys/kernel/livepatch/lp/enabled\n"
          "% rmmod lp\n% rmmod tgt\n")


def _scenarios(d: Path, ids: tuple[str, ...] = ("one", "two")) -> Path:
    d.mkdir()
    for i, sid in enumerate(ids):
        (d / f"{i}.toml").write_text(
            f'id = "{sid}"\ntitle = "{sid}"\nlivepatches = ["lp"]\ndoc = "why"\n'
            f'steps = [{STEPS}]\nexpect = """\n{EXPECT}"""\n')
    return d


def _modules(d: Path) -> Path:
    d.mkdir()
    for m in ("tgt", "lp"):
        (d / f"{m}.ko").write_bytes(b"")
    return d


class FakeProbes:
    """probes.Probes with no BPF: attaches nothing, sends no kernel events."""

    lost_count = 0
    attached: ClassVar[list[list[str]]] = []

    def __init__(self, livepatch_modules: Any = (), build: Any = None) -> None:
        self.status = [Probe("kprobe:klp_enable_patch", "kprobe:klp_enable_patch", True)]
        self.import_s = self.layout_s = self.compile_s = self.attach_s = 0.1
        FakeProbes.attached.append(list(livepatch_modules))

    def open(self, sink: Callable[[Event], None]) -> None:
        self.sink = sink

    def poll(self, timeout_ms: int = 100) -> None:
        pass

    def drain(self) -> None:
        pass

    def lost(self) -> int:
        return FakeProbes.lost_count

    def close(self, expedite: bool = True) -> list[str]:
        return []

    def hand_off(self) -> int:
        return 4242


class FakeWatch:
    oops: Oops | None = None

    def check(self) -> Oops | None:
        return FakeWatch.oops

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _no_dyndbg() -> Iterator[bool]:
    yield False


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    """This machine as a livepatch kernel that klptrace drives through fakes."""
    k = FakeKernel()
    FakeProbes.lost_count = 0
    FakeProbes.attached = []
    FakeWatch.oops = None
    monkeypatch.setattr(probes, "check_kernel", lambda: None)
    monkeypatch.setattr(probes, "Build", lambda: None)
    monkeypatch.setattr(probes, "Probes", FakeProbes)
    monkeypatch.setattr(kmod, "Actor", lambda: k)
    k.close = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(kmod, "patches", lambda: list(k.patches))
    monkeypatch.setattr(kmod, "is_loaded", k.is_loaded)
    monkeypatch.setattr(kmsg, "OopsWatch", FakeWatch)
    monkeypatch.setattr(kmsg, "devkmsg_unlimited", contextlib.nullcontext)
    monkeypatch.setattr(kmsg, "livepatch_debug", _no_dyndbg)
    return k


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


# --- run on this kernel ----------------------------------------------------------------


def test_run_records_and_judges_each_scenario(tmp_path: Path, fake_kernel: FakeKernel,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d, m, out = _scenarios(tmp_path / "s"), _modules(tmp_path / "m"), tmp_path / "r.json"
    code, err = _run(["run", "--scenarios", str(d), "--modules", str(m), "--repeat", "2",
                      "--format", "json", "-o", str(out)], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert [(s["id"], s["status"]) for s in doc["scenarios"]] == [
        ("one", "pass"), ("two", "pass"), ("one", "pass"), ("two", "pass")]
    assert doc["totals"] == {"pass": 4, "fail": 0, "skip": 0, "error": 0}
    assert doc["timing"]["compile_s"] == 0.1 and doc["kernel_info"]["release"]
    assert all(s["start_time"] for s in doc["scenarios"])
    assert "  one: PASS" in err and "dmesg is not compared" in err
    assert FakeProbes.attached == [[str(m / "lp.ko")]]  # one compile, the livepatch traced


def test_run_streams_each_result_as_it_finishes(tmp_path: Path, fake_kernel: FakeKernel,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    d, m, path = _scenarios(tmp_path / "s"), _modules(tmp_path / "m"), tmp_path / "s.jsonl"
    code, _err = _run(["run", "--scenarios", str(d), "--modules", str(m), "--stream",
                       str(path)], capsys)
    assert code == 0
    got = stream.read(path)
    assert [r.id for r in got.results] == ["one", "two"] and got.end is not None
    assert boot._Ended(path)()


def test_lost_events_no_scenario_accounts_for_make_every_scenario_an_error(
        tmp_path: Path, fake_kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    FakeProbes.lost_count = 3  # lost before the first scenario: each one's share is 0
    d, m, out = _scenarios(tmp_path / "s"), _modules(tmp_path / "m"), tmp_path / "r.json"
    code, _err = _run(["run", "--scenarios", str(d), "--modules", str(m), "--format", "json",
                       "-o", str(out)], capsys)
    doc = json.loads(out.read_text())
    assert code == 1 and [s["status"] for s in doc["scenarios"]] == ["error", "error"]
    assert "3 events were lost that no scenario accounts for" in doc["scenarios"][0][
        "explanation"]


def test_after_an_oops_the_rest_is_skipped(tmp_path: Path, fake_kernel: FakeKernel,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    d, m, out = _scenarios(tmp_path / "s"), _modules(tmp_path / "m"), tmp_path / "r.json"
    real_load = fake_kernel.load

    def load_then_oops(path: str, params: str = "", **kw: Any) -> int:
        err = real_load(path, params, **kw)
        if path.endswith("/lp.ko"):
            FakeWatch.oops = Oops(["Oops: 0002 [#1] SMP", "RIP: 0010:lp_pre_patch+0x5/0x9 [lp]",
                                   "---[ end trace 0000000000000000 ]---"], True)
        return err

    fake_kernel.load = load_then_oops  # type: ignore[method-assign]
    code, err = _run(["run", "--scenarios", str(d), "--modules", str(m), "--format", "json",
                      "-o", str(out)], capsys)
    doc = json.loads(out.read_text())
    assert code == 1
    assert [s["status"] for s in doc["scenarios"]] == ["error", "skip"]
    assert doc["scenarios"][1]["explanation"] == (
        "not run: the kernel oopsed in one; reboot, then run it")
    assert "RIP: 0010:lp_pre_patch+0x5/0x9 [lp]" in err  # said as it happened
    assert any("pid 4242 removes them" in x for x in doc["leftovers"])  # probes handed off


def test_a_scenario_that_would_replace_a_foreign_livepatch_is_skipped(
        tmp_path: Path, fake_kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    d, m, out = tmp_path / "s", _modules(tmp_path / "m"), tmp_path / "r.json"
    _scenarios(d, ("one",))
    text = (d / "0.toml").read_text()
    (d / "0.toml").write_text(text.replace('livepatches = ["lp"]',
                                           'livepatches = ["lp"]\nreplaces_all = true'))
    fake_kernel.patches["theirs"] = {"enabled": "1", "transition": "0"}
    code, _err = _run(["run", "--scenarios", str(d), "--modules", str(m), "--format", "json",
                       "-o", str(out)], capsys)
    doc = json.loads(out.read_text())
    assert code == 4 and doc["scenarios"][0]["status"] == "skip"
    assert "theirs" in doc["scenarios"][0]["explanation"]


# --- run --vm, boot after boot ------------------------------------------------------------


@pytest.fixture
def fake_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A cached kernel, its built modules, and a vm.run that plays the guest's stream."""
    root = tmp_path / "k"
    image = root / "boot" / "vmlinuz-9.9.9-1-amd64"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")
    kernel = kernels.Kernel("9.9.9-1-amd64", image, root, None, root, suite="sid")
    mods = _modules(tmp_path / "built")
    lab: dict[str, Any] = {"boots": [], "play": []}
    monkeypatch.setattr(kernels, "ensure", lambda spec, progress=None: kernel)
    monkeypatch.setattr(build, "build", lambda *a, **k: build.Built(
        kernel.release, mods, (mods / "lp.ko", mods / "tgt.ko"), rebuilt=False))

    def fake_run(k: kernels.Kernel, argv: list[str], **kw: Any) -> int:
        lab["boots"].append(argv)
        # what the guest would read: staged under the results directory it shares
        for flag, name in (("--modules", "lp.ko"), ("--scenarios", "0.toml")):
            if flag in argv:
                lab.setdefault("staged", []).append(Path(argv[argv.index(flag) + 1],
                                                         name).is_file())
        stream = Path(argv[argv.index("--stream") + 1])
        assert argv[0] == "env" and argv[1].startswith("KLPTRACE_CACHE=")
        # the ids as the run in the guest parses them (after `--`, whatever they look like)
        ids = cli.build_parser().parse_args(argv[argv.index("run"):]).ids
        return lab["play"].pop(0)(stream, ids)

    monkeypatch.setattr(vm, "run", fake_run)
    return lab


def _doc(sid: str, status: str = "pass", **extra: Any) -> dict[str, Any]:
    return {"id": sid, "status": status, "duration_s": 1.0, "lost_events": 0, "events": [],
            "expected": [], "recorded": [], "explanation": "", "diff": [], "problems": [],
            "notes": [], **extra}


def _write(stream: Path, *records: dict[str, Any]) -> None:
    start = {"start": {"kernel": "9.9.9-1-amd64", "timing": {"compile_s": 5.0},
                       "kernel_info": {"arch": "x86_64"}, "probes": []}}
    stream.write_text("".join(json.dumps(r) + "\n" for r in (start, *records)))


def test_run_vm_boots_again_after_a_wedge_and_a_panic(tmp_path: Path, fake_lab: dict[str, Any],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    d, out = _scenarios(tmp_path / "s", ("a", "b", "c")), tmp_path / "r.json"

    def wedges_after_a(stream: Path, ids: list[str]) -> int:
        assert ids == ["a", "b", "c"]
        _write(stream, {"begin": "a"}, {"scenario": _doc("a", "error", oops=["Oops: x"])},
               {"wedged": "the kernel oopsed"},
               {"end": {"lost_events": 0, "probes": [], "leftovers": ["left"]}})
        return 1

    def panics_in_b(stream: Path, ids: list[str]) -> int:
        assert ids == ["b", "c"]
        _write(stream, {"begin": "b"})
        raise vm.GuestPanic("Kernel panic - not syncing: Fatal exception", tmp_path / "c.log")

    def runs_c(stream: Path, ids: list[str]) -> int:
        assert ids == ["c"]
        _write(stream, {"begin": "c"}, {"scenario": _doc("c")},
               {"end": {"lost_events": 0, "probes": [], "leftovers": []}})
        return 0

    fake_lab["play"] += [wedges_after_a, panics_in_b, runs_c]
    code, err = _run(["run", "--vm", "--scenarios", str(d), "--format", "json", "-o", str(out),
                      "--timeout", "30", "--allow-replace"], capsys)
    doc = json.loads(out.read_text())
    assert code == 1
    assert [(s["id"], s["status"]) for s in doc["scenarios"]] == [
        ("a", "error"), ("b", "error"), ("c", "pass")]
    assert "the guest kernel panicked: Kernel panic - not syncing: Fatal exception" in \
        doc["scenarios"][1]["explanation"]
    assert doc["boots"] == 3 and doc["leftovers"] == ["left"]
    assert doc["kernel_info"] == {"arch": "x86_64", "suite": "sid"}
    assert err.count("booting a fresh guest") == 2
    # the guest got the options it needs, and its own modules and scenarios
    argv = fake_lab["boots"][0]
    assert argv[argv.index("--timeout") + 1] == "30.0" and "--allow-replace" in argv
    assert fake_lab["staged"] == [True] * 6  # modules and scenarios, each boot


def test_run_vm_says_when_the_guest_wrote_nothing(tmp_path: Path, fake_lab: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake_lab["play"].append(lambda stream, ids: 4)
    d = _scenarios(tmp_path / "s", ("a",))
    code, err = _run(["run", "--vm", "--scenarios", str(d)], capsys)
    assert code == 1
    assert "the run in the guest wrote no results (exit status 4)" in err


# --- a matrix ---------------------------------------------------------------------------------

_CHILD = """
import json, sys
spec, out = sys.argv[1], sys.argv[2]
print(f"booting {spec}", file=sys.stderr)
if spec == "broken":
    sys.exit(1)
status = "fail" if spec == "b" else "pass"
doc = {"kernel": spec, "lost_events": 0, "probes": [], "totals": {},
       "scenarios": [{"id": "a", "status": status, "duration_s": 1.0, "events": [],
                      "expected": [], "recorded": [], "explanation": ""}]}
open(out, "w").write(json.dumps(doc))
"""


def test_a_matrix_runs_each_kernel_and_keeps_going(tmp_path: Path, fake_lab: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[list[str]] = []

    def argv(self: Any, spec: str, out: Path) -> list[str]:
        seen.append(matrix._Children._real_argv(self, spec, out))
        return [sys.executable, "-c", _CHILD, spec, str(out)]

    monkeypatch.setattr(matrix._Children, "_real_argv", matrix._Children._argv,
                        raising=False)
    monkeypatch.setattr(matrix._Children, "_argv", argv)
    # the fake lab's kernels have names no real --kernel has
    monkeypatch.setattr(kernels, "parse_spec", lambda text: kernels.KernelSpec("track", text))
    d, out = _scenarios(tmp_path / "s", ("a",)), tmp_path / "m.json"
    t0 = time.monotonic()
    code, err = _run(["run", "--vm", "--kernel", "a", "--kernel", "b", "--kernel", "broken",
                      "--jobs", "2", "--scenarios", str(d), "--format", "json", "-o",
                      str(out)], capsys)
    assert time.monotonic() - t0 < 60
    doc = json.loads(out.read_text())
    assert code == 1  # the worst of them
    assert [r["kernel"] for r in doc["runs"]] == ["a", "b", "broken"]
    assert [[s["status"] for s in r["scenarios"]] for r in doc["runs"]] == [
        ["pass"], ["fail"], ["error"]]
    assert "ended with exit status 1 and no results" in doc["runs"][2]["scenarios"][0][
        "explanation"]
    assert "[a] booting a" in err and "[broken] booting broken" in err
    assert all(a[a.index("--kernel") + 1] == k for a, k in zip(seen, ("a", "b", "broken"),
                                                                  strict=True))
    assert all("--scenarios" in a and "json" in a for a in seen)


def test_default_jobs_follow_cores_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matrix.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(matrix, "_available_mib", lambda: 23 * 1024)
    assert matrix.default_jobs(3, 2, 4096)[0] == 1
    assert matrix.default_jobs(3, 1, 4096)[0] == 2
    monkeypatch.setattr(matrix, "_available_mib", lambda: 5000)
    jobs, why = matrix.default_jobs(3, 1, 4096)
    assert jobs == 1 and "2 cores for guests of 1 vCPU(s)" in why and "--jobs N" in why


# --- trace -----------------------------------------------------------------------------------


class FakeLog:
    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def records(self) -> list[tuple[int, str]]:
        return [(1, "% insmod lp.ko")]

    def close(self) -> None:
        pass


def test_trace_runs_the_command_and_tells_its_story(tmp_path: Path, fake_kernel: FakeKernel,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kmsg, "KernelLog", FakeLog)
    ko = tmp_path / "lp.ko"
    ko.write_bytes(b"")
    sent: list[int] = []

    def drain(self: FakeProbes) -> None:
        if not sent:  # the command's write of its `%` line to /dev/kmsg, once
            sent.append(1)
            self.sink(Event(EventKind.KMSG_WRITE, time.monotonic_ns(), comm="sh"))

    monkeypatch.setattr(FakeProbes, "drain", drain)
    code = cli.main(["trace", "--module", str(ko), "--format", "json", "--", "sh", "-c",
                     "exit 3"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 3  # the command's status
    assert doc["transcript"] == ["% insmod lp.ko"] and doc["status"] == 3
    assert "Tracing livepatch events of" in err
    expect = tmp_path / "expected.txt"
    expect.write_text("# only the step\n% insmod lp.ko\n")
    sent.clear()
    assert cli.main(["trace", "--module", str(ko), "--expect", str(expect), "--format", "ktap",
                     "--", "true"]) == 0
    assert "ok 1 trace" in capsys.readouterr().out
    # an expectation the recording does not meet: exit status 1 and the diff
    expect.write_text("% insmod other.ko\n")
    sent.clear()
    assert cli.main(["trace", "--module", str(ko), "--expect", str(expect), "--", "true"]) == 1
    out = capsys.readouterr().out
    assert "-% insmod other.ko" in out and "+% insmod lp.ko" in out, out


def test_trace_stops_at_an_oops(tmp_path: Path, fake_kernel: FakeKernel,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kmsg, "KernelLog", FakeLog)
    FakeWatch.oops = Oops(["BUG: kernel NULL pointer dereference, address: 0",
                           "RIP: 0010:acme_prepare+0x5/0x9 [acme_lp]"], True)
    t0 = time.monotonic()
    code = cli.main(["trace", "--format", "json", "--", "sleep", "300"])
    out, err = capsys.readouterr()
    assert time.monotonic() - t0 < 30  # noticed at once, not when the command ends
    doc = json.loads(out)
    assert code != 0 and doc["oops"][1].startswith("RIP: 0010:acme_prepare")
    assert any(p.startswith("the kernel oopsed: BUG: kernel NULL pointer dereference")
               for p in doc["problems"])
    assert "sleep (pid" in err and "left behind" in err
