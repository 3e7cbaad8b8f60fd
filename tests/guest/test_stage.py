"""guest/stage.py: what a run in a lab guest is given to read, checked before any boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from klptrace import scenario
from klptrace.errors import UsageError
from klptrace.guest import stage


def _one(sid: str = "target-module-before-livepatch") -> list[scenario.Scenario]:
    return [s for s in scenario.load_dir() if s.id == sid]


def test_a_modules_option_that_is_no_directory_is_a_usage_error(tmp_path: Path) -> None:
    built = tmp_path / "built"
    built.mkdir()
    (tmp_path / "file.ko").write_text("")
    with pytest.raises(UsageError) as e:
        stage.modules(tmp_path / "m", built, str(tmp_path / "file.ko"), _one())
    assert e.value.message == f"--modules {tmp_path / 'file.ko'}: not a directory"


def test_a_module_no_directory_has_is_named_with_both_places(tmp_path: Path) -> None:
    built, user = tmp_path / "built", tmp_path / "user"
    built.mkdir()
    user.mkdir()
    (built / "klptrace_target.ko").write_text("")
    with pytest.raises(UsageError) as e:
        stage.modules(tmp_path / "m", built, str(user), _one())
    assert e.value.message == f"no module file for klptrace_lp in {built} or {user}"
    assert e.value.hint == "build your modules for this kernel and pass --modules DIR"


def test_klptrace_s_modules_alone_are_staged_without_a_user_s(tmp_path: Path) -> None:
    built = tmp_path / "built"
    built.mkdir()
    for m in ("klptrace_target", "klptrace_lp", "klptrace_busy"):
        (built / f"{m}.ko").write_text(m)
    (built / "notes.txt").write_text("not a module")
    dest = stage.modules(tmp_path / "m", built, None, _one())
    assert sorted(p.name for p in dest.iterdir()) == [
        "klptrace_busy.ko", "klptrace_lp.ko", "klptrace_target.ko"]


def test_klptrace_s_scenarios_are_not_staged(tmp_path: Path) -> None:
    assert stage.scenarios(tmp_path / "s", None) is None
    assert not (tmp_path / "s").exists()


def test_the_cache_is_shared_with_the_guest(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "cache"))
    prefix, layouts = stage.cache_share()
    assert prefix == ["env", f"KLPTRACE_CACHE={tmp_path / 'cache'}"]
    assert layouts == tmp_path / "cache" / "layout"
