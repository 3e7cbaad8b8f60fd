"""commands/run.py on this kernel, offline (the fakes of test_commands_offline): what it
refuses to run beside, where it finds the modules, and the stream a run in a guest writes
when its kernel wedges."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from test_commands_offline import FakeWatch, _modules, _run, _scenarios, fake_kernel
from test_runner import FakeKernel

from klptrace import assets
from klptrace.commands import run as run_cmd
from klptrace.errors import NotSupported
from klptrace.guest import stream
from klptrace.kernel import kmod
from klptrace.oops import Oops

__all__ = ["fake_kernel"]  # the fixture, for the tests below


def test_a_module_of_ours_already_loaded_is_refused(
        tmp_path: Path, fake_kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    fake_kernel.loaded.append("lp")
    code, err = _run(["run", "--scenarios", str(_scenarios(tmp_path / "s")), "--modules",
                      str(_modules(tmp_path / "m"))], capsys)
    assert code == 1
    assert err.splitlines()[-1] == (  # after the startup line, nothing but the error
        "klptrace: error: refusing to run: module lp is already loaded and klptrace did not "
        "load it: unload it first (rmmod lp)")
    assert "Traceback" not in err and "  one: " not in err


def test_a_foreign_transition_is_refused(tmp_path: Path, fake_kernel: FakeKernel,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    fake_kernel.patches["theirs"] = {"enabled": "1", "transition": "1"}
    monkeypatch.setattr(kmod, "patch_attr", fake_kernel.patch_attr)
    code, err = _run(["run", "--scenarios", str(_scenarios(tmp_path / "s")), "--modules",
                      str(_modules(tmp_path / "m"))], capsys)
    assert code == 1
    assert err.splitlines()[-1] == (
        "klptrace: error: refusing to run: livepatch theirs is in transition: wait until "
        "/sys/kernel/livepatch/theirs/transition reads 0")
    assert "Traceback" not in err and "  one: " not in err


def test_allow_replace_runs_beside_a_foreign_livepatch_and_warns(
        tmp_path: Path, fake_kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    d = _scenarios(tmp_path / "s", ("one",))
    text = (d / "0.toml").read_text()
    (d / "0.toml").write_text(text.replace('livepatches = ["lp"]',
                                           'livepatches = ["lp"]\nreplaces_all = true'))
    fake_kernel.patches["theirs"] = {"enabled": "1", "transition": "0"}
    code, err = _run(["run", "--scenarios", str(d), "--modules", str(_modules(tmp_path / "m")),
                      "--allow-replace"], capsys)
    assert "klptrace: warning: atomic-replace will replace theirs, which klptrace did not " \
           "load (--allow-replace)" in err
    assert code == 0 and "  one: PASS" in err  # run, not skipped


def test_no_livepatch_here_is_a_skip(tmp_path: Path, fake_kernel: FakeKernel,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from klptrace.record import probes

    def check_kernel() -> None:
        raise NotSupported("no livepatch", "use --vm")

    monkeypatch.setattr(probes, "check_kernel", check_kernel)
    code, err = _run(["run", "--scenarios", str(_scenarios(tmp_path / "s"))], capsys)
    assert code == 4 and err == "klptrace: skip: no livepatch\n  hint: use --vm\n"


def test_in_a_guest_a_wedged_kernel_ends_the_run_and_its_stream(
        tmp_path: Path, fake_kernel: FakeKernel, capsys: pytest.CaptureFixture[str]) -> None:
    real_load = fake_kernel.load

    def load_then_oops(path: str, params: str = "", **kw: Any) -> int:
        err = real_load(path, params, **kw)
        FakeWatch.oops = Oops(["Oops: 0002 [#1] SMP", "---[ end trace 0 ]---"], True)
        return err

    fake_kernel.load = load_then_oops  # type: ignore[method-assign]
    path = tmp_path / "s.jsonl"
    code, err = _run(["run", "--scenarios", str(_scenarios(tmp_path / "s", ("a", "b", "c"))),
                      "--modules", str(_modules(tmp_path / "m")), "--stream", str(path)],
                     capsys)
    got = stream.read(path)
    assert code == 1  # the document's status: nothing is written on stdout
    assert capsys.readouterr().out == ""
    assert [r.id for r in got.results] == ["a"]  # b and c: for a fresh guest, not skipped
    assert got.wedged == "the kernel oopsed" and got.begun is None
    assert got.end is not None and got.end.timing is not None and "detach_s" in got.end.timing
    assert "the kernel oopsed in a: the remaining scenarios are not run" in err


def test_modules_come_from_the_cache_for_this_kernel(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "cache"))
    built: list[Path] = []

    def build_modules(kdir: Path) -> Any:
        built.append(kdir)
        raise AssertionError("no build when the cache has them")

    monkeypatch.setattr(assets, "build_modules", build_modules)
    cached = tmp_path / "cache" / "modules" / os.uname().release
    cached.mkdir(parents=True)
    (cached / "lp.ko").write_bytes(b"")
    assert run_cmd.module_dir(None, ["lp"]) == cached
    assert run_cmd.module_dir(str(tmp_path / "cache"), []) == tmp_path / "cache"
    with pytest.raises(NotSupported) as e:
        run_cmd.module_dir(str(tmp_path), ["lp", "tgt"])
    assert e.value.message == (f"no built test modules for this kernel in {tmp_path} "
                               "(missing lp, tgt)")
    assert built == []


def test_missing_modules_are_built_when_this_kernel_s_headers_are_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "cache"))
    out = _modules(tmp_path / "built")
    kdirs: list[Path] = []

    class Built:
        dir = out

    def build_modules(kdir: Path) -> Built:
        kdirs.append(kdir)
        return Built()

    real_is_file = Path.is_file
    headers = Path(f"/lib/modules/{os.uname().release}/build/Makefile")
    monkeypatch.setattr(Path, "is_file", lambda p: p == headers or real_is_file(p))
    monkeypatch.setattr(assets, "build_modules", build_modules)
    assert run_cmd.module_dir(None, ["lp", "tgt"]) == out
    assert kdirs == [headers.parent]
