"""A kernel's build configuration, as Debian ships it beside the image.

Read before anything boots: a kernel that cannot livepatch or be traced is
refused from its config (exit 4), not discovered in a guest minutes later;
and the guest's root filesystem (9p or virtiofs) is chosen from what the
kernel has built in or as a module. Debian's packages ship the config as
boot/config-<release> (up to 6.12's layout) or usr/lib/modules/<release>/config
(in linux-base-<release> since the 6.13-era layout).
"""

from __future__ import annotations

import re
from pathlib import Path

from klptrace.errors import KlptraceError

#: what klptrace needs of every kernel: livepatch itself, kprobes (the deferred
#: kprobe events on the livepatch modules' callbacks) and BPF programs on them
REQUIRED = ("CONFIG_LIVEPATCH", "CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS", "CONFIG_BPF_EVENTS")

#: what the lab's guest needs to mount the host's / over 9p (vng --force-9p)
NINE_P = ("CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO")
#: ... and over virtiofs (vng with virtiofsd)
VIRTIOFS = ("CONFIG_VIRTIO_FS", "CONFIG_FUSE_FS")

_LINE_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")

Config = dict[str, str]


def parse(text: str) -> Config:
    """The options a config sets (`CONFIG_X=value`); `# ... is not set` lines are left out."""
    found: Config = {}
    for line in text.splitlines():
        m = _LINE_RE.match(line.strip())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def read(path: Path) -> Config:
    """parse() of a config file; KlptraceError if it cannot be read."""
    try:
        return parse(path.read_text(errors="replace"))
    except OSError as e:
        raise KlptraceError(f"cannot read the kernel config {path}: {e.strerror}") from None


def enabled(config: Config, name: str) -> bool:
    """Is the option built in or a module?"""
    return config.get(name) in ("y", "m")


def missing(config: Config, names: tuple[str, ...] = REQUIRED) -> list[str]:
    """Of names, those the config leaves unset (or =n)."""
    return [n for n in names if not enabled(config, n)]


def beside(image: Path, release: str) -> Path | None:
    """The config shipped beside an image: `config` (usr/lib/modules/<release>/),
    `config-<release>` (boot/), or None."""
    for name in ("config", f"config-{release}"):
        if (image.parent / name).is_file():
            return image.parent / name
    return None
