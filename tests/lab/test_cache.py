"""klptrace's cache is trusted only when no one else can write it: what it boots, loads
as root and compiles into BPF comes from there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from klptrace.errors import KlptraceError
from klptrace.lab import defaults


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    d.mkdir(mode=0o755)
    monkeypatch.setenv("KLPTRACE_CACHE", str(d))
    monkeypatch.setattr(defaults, "_in_lab_guest", lambda: False)
    return d


def test_a_private_cache_is_taken(cache: Path) -> None:
    (cache / "kernels").mkdir(mode=0o700)
    assert defaults.cache_dir() == cache


@pytest.mark.parametrize(("mode", "who"), [(0o777, "its group and others"),
                                           (0o775, "its group"), (0o757, "others"),
                                           (0o1777, "its group and others")])
@pytest.mark.parametrize("sub", ["", "kernels", "modules", "roots", "layout", "apt"])
def test_a_cache_others_can_write_is_refused(cache: Path, mode: int, who: str,
                                             sub: str) -> None:
    d = cache / sub if sub else cache
    d.mkdir(exist_ok=True)
    d.chmod(mode)
    with pytest.raises(KlptraceError) as e:
        defaults.cache_dir()
    assert e.value.message == (f"klptrace's cache {d} is writable by {who}: they could "
                               "change what klptrace loads")
    assert e.value.hint == (f"chmod go-w {d}, or point KLPTRACE_CACHE at a directory only "
                            "you can write")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
@pytest.mark.parametrize("sub", ["", "modules"])
def test_a_cache_of_another_user_is_refused(cache: Path, sub: str) -> None:
    d = cache / sub if sub else cache
    d.mkdir(exist_ok=True)
    os.chown(d, 12345, -1)
    with pytest.raises(KlptraceError) as e:
        defaults.cache_dir()
    assert e.value.message.startswith(f"klptrace's cache {d} belongs to uid 12345, not to uid 0")
    assert e.value.hint is not None and e.value.hint.startswith(f"chown -R 0 {cache}, or point "
                                                                "KLPTRACE_CACHE at")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_the_lab_guest_takes_the_hosts_cache(cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In the guest the host's cache comes over 9p with its owner's uid: taken, unless
    others can write it there too."""
    os.chown(cache, 12345, -1)
    monkeypatch.setattr(defaults, "_in_lab_guest", lambda: True)
    assert defaults.cache_dir() == cache
    cache.chmod(0o777)
    with pytest.raises(KlptraceError, match="writable by its group and others"):
        defaults.cache_dir()


def test_the_lab_guest_is_told_by_its_command_line(tmp_path: Path) -> None:
    f = tmp_path / "cmdline"
    f.write_text("virtme_hostname=x loglevel=4 virtme.exec=`c2ggL3Rtc...` panic=-1\n")
    assert defaults._in_lab_guest(str(f))
    f.write_text("BOOT_IMAGE=/vmlinuz root=UUID=x ro quiet\n")
    assert not defaults._in_lab_guest(str(f))
    assert not defaults._in_lab_guest(str(tmp_path / "absent"))


def test_a_missing_cache_is_made_private_whatever_the_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "a" / "b" / "cache"))
    old = os.umask(0)
    try:
        got = defaults.cache_dir()
    finally:
        os.umask(old)
    assert got == tmp_path / "a" / "b" / "cache"
    for d in (tmp_path / "a", tmp_path / "a" / "b", got):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_a_cache_that_cannot_be_made_says_so(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(KlptraceError) as e:
        defaults.cache_dir()
    assert e.value.message == (f"cannot make klptrace's cache {tmp_path / 'file' / 'cache'}: "
                               "Not a directory")
    assert e.value.hint == "point KLPTRACE_CACHE at a directory you can write"
    monkeypatch.setenv("KLPTRACE_CACHE", str(tmp_path / "file"))
    with pytest.raises(KlptraceError, match="is not a directory"):
        defaults.cache_dir()


# --- the lock ----------------------------------------------------------------------------


def test_the_lock_is_a_private_file(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with defaults.locked(tmp_path):
            assert stat.S_IMODE((tmp_path / ".lock").stat().st_mode) == 0o600
        with defaults.locked(tmp_path):  # there already: taken again
            pass
    finally:
        os.umask(old)


def test_a_link_planted_as_the_lock_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".lock").symlink_to(victim)
    ran = []
    with pytest.raises(KlptraceError) as e, defaults.locked(tmp_path / "d"):
        ran.append(1)
    assert not ran and victim.read_text() == "untouched\n"
    assert e.value.message == (f"cannot open the cache's lock {tmp_path / 'd' / '.lock'}: "
                               "Too many levels of symbolic links")
    assert e.value.hint == f"remove {tmp_path / 'd' / '.lock'} (it must be a plain file)"
    (tmp_path / "d" / ".lock").unlink()
    (tmp_path / "d" / ".lock").symlink_to(tmp_path / "absent")  # a dangling one: not made
    with pytest.raises(KlptraceError), defaults.locked(tmp_path / "d"):
        pass
    assert not (tmp_path / "absent").exists()
