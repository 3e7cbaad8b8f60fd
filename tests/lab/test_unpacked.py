"""An unpacked kernel tree made usable in the cache (lab/unpacked.py)."""

from __future__ import annotations

import os
from pathlib import Path

from klptrace.lab import unpacked

# --- the unpacked tree -----------------------------------------------------------


def test_relink_absolute(tmp_path: Path) -> None:
    hdrs = tmp_path / "usr" / "src" / "linux-headers-6.1.0-9-amd64"
    hdrs.mkdir(parents=True)
    mods = tmp_path / "lib" / "modules" / "6.1.0-9-amd64"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to("/usr/src/linux-headers-6.1.0-9-amd64")
    (mods / "source").symlink_to("/usr/src/not-unpacked")  # stays: nothing to point at
    (hdrs / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")  # relative: stays
    changed = unpacked.relink_absolute(tmp_path)
    assert changed == [mods / "build"]
    assert os.readlink(mods / "build") == "../../../usr/src/linux-headers-6.1.0-9-amd64"
    assert (mods / "build").resolve() == hdrs
    assert os.readlink(mods / "source") == "/usr/src/not-unpacked"
    assert os.readlink(hdrs / "scripts") == "../../lib/linux-kbuild-6.1/scripts"


def test_rewrite_headers_makefile(tmp_path: Path) -> None:
    kdir = tmp_path / "usr" / "src" / "linux-headers-6.1.0-9-amd64"
    kdir.mkdir(parents=True)
    (kdir / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-9-common/Makefile\n")
    unpacked.rewrite_headers_makefile(kdir, tmp_path)
    assert (kdir / "Makefile").read_text() == (
        f"include {tmp_path}/usr/src/linux-headers-6.1.0-9-common/Makefile\n"
    )
    unpacked.rewrite_headers_makefile(kdir, tmp_path)  # idempotent
    assert (kdir / "Makefile").read_text().count("/usr/src/") == 1
