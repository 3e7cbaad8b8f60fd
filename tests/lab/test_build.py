"""Building the test modules against a kernel's headers (lab/build.py), with a fake KDIR."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from klptrace.errors import KlptraceError
from klptrace.lab import build

# --- building modules ---------------------------------------------------------------


def test_source_files_and_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += a.o\n")
    (src / "a.c").write_text("int x;\n")
    for product in ("a.o", "a.ko", "a.mod.c", ".a.o.cmd", "modules.order"):
        (src / product).write_text("")
    files = build.source_files(src)
    assert files == [Path("Kbuild"), Path("a.c")]
    kdir = tmp_path / "kdir"
    kdir.mkdir()
    d1 = build.source_digest(src, files, kdir, "6.1.0-9-amd64")
    (src / "a.ko").write_text("rebuilt product")
    assert build.source_digest(src, files, kdir, "6.1.0-9-amd64") == d1
    (src / "a.c").write_text("int y;\n")
    assert build.source_digest(src, files, kdir, "6.1.0-9-amd64") != d1
    assert build.source_digest(src, files, kdir, "6.1.0-10-amd64") != d1


def test_kdir_release_reads_uts_release(tmp_path: Path) -> None:
    gen = tmp_path / "include" / "generated"
    gen.mkdir(parents=True)
    (gen / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-56-amd64"\n')
    assert build.kdir_release(tmp_path) == "6.1.0-56-amd64"
    with pytest.raises(KlptraceError, match="not a prepared kernel build directory"):
        build.kdir_release(tmp_path / "nowhere")


def _fake_kdir(tmp_path: Path) -> Path:
    """A 'KDIR' whose make writes a .ko per obj-m entry and counts its runs."""
    kdir = tmp_path / "kdir"
    (kdir / "include" / "generated").mkdir(parents=True)
    (kdir / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "9.9.9-1-amd64"\n'
    )
    (kdir / "Makefile").write_text(
        "modules:\n"
        "\t@echo run >> $(M)/../runs\n"
        "\t@for o in $$(sed -n 's/^obj-m += //p' $(M)/Kbuild); do touch $(M)/$${o%.o}.ko; done\n"
    )
    return kdir


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_build_rebuilds_only_on_change(tmp_path: Path) -> None:
    kdir = _fake_kdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += one.o\n")
    (src / "one.c").write_text("/* 1 */\n")
    cache = tmp_path / "cache"
    first = build.build(kdir=kdir, src=src, cache=cache)
    dest = cache / "modules" / "9.9.9-1-amd64"
    assert (first.release, first.dir, first.rebuilt) == ("9.9.9-1-amd64", dest, True)
    assert first.modules == (dest / "one.ko",)
    assert (dest / "one.c").read_text() == "/* 1 */\n"
    assert not (src / "one.ko").exists()  # the working tree stays clean

    again = build.build(kdir=kdir, src=src, cache=cache)
    assert again.rebuilt is False and again.modules == first.modules
    assert (cache / "modules" / "runs").read_text().count("run") == 1

    (src / "one.c").write_text("/* 2 */\n")
    third = build.build(kdir=kdir, src=src, cache=cache)
    assert third.rebuilt is True
    assert (dest / "one.c").read_text() == "/* 2 */\n"
    assert (cache / "modules" / "runs").read_text().count("run") == 2


def test_build_without_sources(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(KlptraceError, match="no test modules"):
        build.build(kdir=_fake_kdir(tmp_path), src=tmp_path / "src", cache=tmp_path)


def test_build_failure_names_the_error(tmp_path: Path) -> None:
    kdir = _fake_kdir(tmp_path)
    (kdir / "Makefile").write_text("modules:\n\t@echo 'a.c:1: error: boom' >&2; exit 2\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m += a.o\n")
    with pytest.raises(KlptraceError) as err:
        build.build(kdir=kdir, src=src, cache=tmp_path / "cache")
    assert "error: boom" in err.value.message
