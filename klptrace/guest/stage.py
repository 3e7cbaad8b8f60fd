"""What a run in a lab guest reads from the host: its modules, its scenarios, the cache.

The guest sees the host's / read-only and the directories vm.run shares with it;
what it needs from elsewhere (a user's modules or scenarios, wherever they are)
is copied into the results directory it shares, and klptrace's cache is shared
for the BTF layouts that the guest would otherwise read again at every boot.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from klptrace import scenario
from klptrace.errors import UsageError
from klptrace.lab import defaults
from klptrace.record import btf


def modules(dest: Path, built: Path, user: str | None, scs: list[scenario.Scenario]) -> Path:
    """One directory the guest reads the modules from: klptrace's, then the user's over them."""
    dest.mkdir()
    sources = [built] + ([Path(user)] if user else [])
    for d in sources:
        if not d.is_dir():
            raise UsageError(f"--modules {d}: not a directory")
        for ko in d.glob("*.ko"):
            shutil.copy2(ko, dest / ko.name)
    missing = sorted({m for s in scs for m in s.modules if not (dest / f"{m}.ko").is_file()})
    if missing:
        raise UsageError(f"no module file for {', '.join(missing)} in "
                         + " or ".join(str(d) for d in sources),
                         "build your modules for this kernel and pass --modules DIR")
    return dest


def scenarios(dest: Path, user: str | None) -> Path | None:
    """A copy of the user's scenario files, which the guest may not see where they are."""
    if not user:
        return None
    dest.mkdir()
    for f in scenario.scenario_files(Path(user)):  # what the host checked, nothing else
        shutil.copy2(f, dest / f.name)
    return dest


def cache_share() -> tuple[list[str], Path]:
    """The `env` prefix that points the guest's cache at this host's, and the directory
    of BTF layouts in it the guest must be able to write (btf.cached_layout keeps them
    across boots)."""
    return btf.guest_layout_share(defaults.cache_dir())
