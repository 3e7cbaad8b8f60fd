"""The guest's size and patience when nothing else is asked for, and where klptrace's
cache is (the one place they are written: `vm`, `run --vm`, the benchmark and the
tests all take them from here)."""

import os
from pathlib import Path

CPUS = 2
MEMORY = "4G"
TIMEOUT_S = 1800.0  # the longest a guest may run


def cache_dir() -> Path:
    """klptrace's cache: $KLPTRACE_CACHE, else ~/.cache/klptrace."""
    env = os.environ.get("KLPTRACE_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "klptrace"
