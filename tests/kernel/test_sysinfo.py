"""/proc/version as reports name the kernel."""

import os

import pytest

from klptrace.kernel import proc, sysinfo

DEBIAN = ("Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
          "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
          "PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-20)\n")


def test_debian_proc_version() -> None:
    assert sysinfo.parse_proc_version(DEBIAN) == {
        "release": "6.1.0-57-amd64", "builder": "debian-kernel@lists.debian.org",
        "compiler": "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0",
        "linker": "GNU ld (GNU Binutils for Debian) 2.40",
        "build": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-20)",
        "debian_version": "6.1.192-3"}


def test_other_proc_versions() -> None:
    got = sysinfo.parse_proc_version(
        "Linux version 6.18.44-x (b@s) (gcc (GCC) 15.3.0, GNU ld (GNU Binutils) 2.46) #1 SMP @0")
    assert got["compiler"] == "gcc (GCC) 15.3.0" and "debian_version" not in got
    assert sysinfo.parse_proc_version("nonsense") == {}
    assert sysinfo.running_kernel()["arch"]


def test_proc_stat_counts_fields_from_the_last_parenthesis() -> None:
    text = "42 (a) b) c) S 1 42 42 0 -1 4194560 0 0 0 0 7 3 0 0 20 0 1 0 1234 0 0\n"
    st = proc.Stat.parse(text)
    assert (st.state, st.ppid, st.pgrp, st.utime, st.stime, st.starttime) == (
        "S", 1, 42, 7, 3, 1234)
    with pytest.raises(ValueError):
        proc.Stat.parse("42 (short) S 1 2")
    me = proc.stat()
    assert me is not None and me.state in "RS" and os.getpid() in proc.pids()
    assert proc.stat(2**22 + 1) is None  # above pid_max's limit: never a process
