"""klptrace leaves the kernel as it found it: after signals, and beside a foreign livepatch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from util import until

from klptrace.kernel import kmod, kmsg
from klptrace.record import kprobes, probes


def _settings() -> dict[str, str]:
    """The kernel settings klptrace changes while it runs and must put back."""
    out = {}
    for path in (probes.RCU_EXPEDITED, kmsg.DEVKMSG):
        out[path] = Path(path).read_text()
    out["dyndbg"] = "".join(line for line in open(kmsg.DYNDBG)
                            if line.startswith("kernel/livepatch/"))
    return out


def _ours_left() -> list[str]:
    return ([f"module {m}" for m in kmod.loaded_modules() if m.startswith("klptrace_")]
            + [f"patch {p}" for p in kmod.patches() if p.startswith("klptrace_")]
            + [f"kprobe event {e}" for e in kprobes.leftover_events()])




def _sleeping() -> bool:
    """klptrace_lp's sleep=<callback> is asleep: the syscall that ran it is in flight."""
    try:
        return Path("/sys/module/klptrace_lp/parameters/sleeping").read_text().strip() == "1"
    except OSError:
        return False


#: scenarios whose step is held in flight by a callback of klptrace_lp that sleeps
#: (sleep=<callback>): the signal comes while that syscall is in the kernel
IN_FLIGHT = {
    # a livepatch's insmod: klp_enable_patch() runs pre_patch in the module's init
    "enable": [{"load": "klptrace_lp", "params": "sleep=pre_patch"}],
    # a target's insmod: klp_module_coming() runs pre_patch before the target's init
    "load": [{"load": "klptrace_lp"},
             {"set": "klptrace_lp", "param": "sleep", "value": "pre_patch"},
             {"load": "klptrace_target"}],
    # echo 0 > enabled: __klp_disable_patch() runs pre_unpatch in the writer
    "disable": [{"load": "klptrace_target"}, {"load": "klptrace_lp"},
                {"set": "klptrace_lp", "param": "sleep", "value": "pre_unpatch"},
                {"disable": "klptrace_lp"}],
    # a target's rmmod: klp_module_going() runs pre_unpatch for the going object
    "unload": [{"load": "klptrace_lp"}, {"load": "klptrace_target"},
               {"set": "klptrace_lp", "param": "sleep", "value": "pre_unpatch"},
               {"unload": "klptrace_target"}],
}


def _in_flight_scenario(directory: Path, step: str) -> str:
    """A scenario file that holds a step of that kind in flight; its id."""
    sid = f"signal-during-{step}"
    steps = ",\n".join("  { " + ", ".join(f'{k} = "{v}"' for k, v in s.items()) + " }"
                        for s in IN_FLIGHT[step])
    (directory / f"{sid}.toml").write_text(f'''
id = "{sid}"
title = "a signal while its {step} step is in flight"
livepatches = ["klptrace_lp"]
doc = "klptrace_lp's sleep parameter holds the last step in the kernel for 3 s."
steps = [
{steps},
]
expect = "% insmod klptrace_lp.ko"
''')
    return sid


POINTS = {
    # name: (scenario, signal, condition that marks the point)
    "after-target-loads": ("target-module-before-livepatch", signal.SIGINT,
                           lambda: kmod.is_loaded("klptrace_target")),
    "after-livepatch-loads": ("module-coming-notifier", signal.SIGTERM,
                              lambda: kmod.patch_attr("klptrace_lp", "enabled") == "1"),
    "during-a-transition": ("target-module-not-present", signal.SIGINT,
                            lambda: kmod.patch_attr("klptrace_lp", "transition") is not None),
    "during-a-stall": ("busy-target-module", signal.SIGTERM,
                       lambda: kmod.patch_attr("klptrace_lp", "transition") == "1"),
    **{f"during-a-{step}": (f"signal-during-{step}", sig, _sleeping)
       for step, sig in (("enable", signal.SIGINT), ("load", signal.SIGTERM),
                         ("disable", signal.SIGINT), ("unload", signal.SIGTERM))},
}


@pytest.mark.parametrize("point", list(POINTS))
def test_signal_leaves_nothing_behind(module_dir: Path, tmp_path: Path, point: str) -> None:
    """A signal at any point, a syscall in flight included, ends with everything
    klptrace loaded unloaded and every setting put back (on every kernel)."""
    sid, sig, reached = POINTS[point]
    assert not _ours_left()
    before = _settings()
    argv = [sys.executable, "-m", "klptrace", "run", "--modules", str(module_dir),
            "--format", "json"]
    if sid.startswith("signal-during-"):
        argv += ["--scenarios", str(tmp_path)]
        _in_flight_scenario(tmp_path, sid.removeprefix("signal-during-"))
    proc = subprocess.Popen([*argv, sid], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert until(reached, 180), f"{point} was never reached"
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    sys.stderr.write(err)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {signal.Signals(sig).name}" in err
    assert "Traceback" not in err
    assert not _ours_left(), err
    assert _settings() == before


@pytest.mark.once
def test_foreign_livepatch_is_left_alone(module_dir: Path, tmp_path: Path) -> None:
    assert kmod.load(str(module_dir / "klptrace_foreign.ko")) == 0
    try:
        assert until(lambda: kmod.patch_attr("klptrace_foreign", "transition") == "0")
        out = tmp_path / "r.json"
        p = subprocess.run([sys.executable, "-m", "klptrace", "run", "--modules",
                            str(module_dir), "--format", "json", "-o", str(out),
                            "atomic-replace", "module-going-notifier", "busy-target-module"],
                           stderr=subprocess.PIPE, text=True)
        doc = json.loads(out.read_text())
        status = {s["id"]: s["status"] for s in doc["scenarios"]}
        assert status == {"atomic-replace": "skip", "module-going-notifier": "pass",
                          "busy-target-module": "pass"}, p.stderr
        assert "klptrace_foreign" in doc["scenarios"][0]["explanation"]
        assert p.returncode == 0
        # still there, still enabled, still patching /proc/version
        assert kmod.patch_attr("klptrace_foreign", "enabled") == "1"
        assert Path("/proc/version").read_text().startswith("klptrace_foreign:")
    finally:
        kmod.write("/sys/kernel/livepatch/klptrace_foreign/enabled", "0")
        until(lambda: kmod.unload("klptrace_foreign") == 0, 60)
    assert not _ours_left()


@pytest.mark.once
def test_transition_timeout_is_reversed_and_cleaned_up(module_dir: Path,
                                                       tmp_path: Path) -> None:
    """A scenario whose transition never ends errors out; the transition is reversed."""
    (tmp_path / "stuck.toml").write_text('''
id = "stuck"
title = "waits for a transition that the busy module never lets finish"
livepatches = ["klptrace_lp"]
doc = "klptrace_busy sleeps in a function klptrace_lp patches, so patching cannot complete."
steps = [
  { load = "klptrace_busy", params = "block_transition=Y" },
  { load = "klptrace_lp" },
]
expect = "% insmod klptrace_busy.ko block_transition=Y"
''')
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "klptrace", "run", "--scenarios", str(tmp_path),
                        "--modules", str(module_dir), "--timeout", "5", "--format", "json",
                        "-o", str(out)], capture_output=True, text=True)
    doc = json.loads(out.read_text())
    sc = doc["scenarios"][0]
    assert p.returncode == 1 and sc["status"] == "error", p.stderr
    assert "transition still reads 1" in sc["explanation"]
    assert "klptrace stall" in sc["explanation"]
    # cleanup reversed the transition (no force) and unloaded both modules
    assert "reversing transition from patching to unpatching" in "\n".join(sc["recorded"])
    assert not _ours_left()


#: where each hostile scenario file aims its name: the sentinel's path, reached
#: through the module directory or sysfs
_AIMS: dict[str, Callable[[str], str]] = {
    "load": lambda rel: f'{{ load = "{rel}" }}',
    "set-param": lambda rel: f'{{ set = "klptrace_target", param = "{rel}", value = "x" }}',
    "set-module": lambda rel: f'{{ set = "{rel}", param = "p", value = "x" }}',
    "disable": lambda rel: f'{{ disable = "{rel}" }}',
    "unload": lambda rel: f'{{ unload = "{rel}" }}',
}


def test_no_scenario_can_change_a_file_outside_what_klptrace_writes(
        module_dir: Path, tmp_path: Path) -> None:
    """Scenario files are untrusted input run as root: names that climb out of the module
    directory or sysfs towards a sentinel file are refused before anything runs, and
    klptrace's one writer of kernel files refuses such a path even when handed it."""
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("untouched\n")
    rel = "../../../../../../.." + str(sentinel)
    packs = tmp_path / "packs"
    for kind, aim in _AIMS.items():
        for name in (rel, str(sentinel)):
            d = packs / f"{kind}-{len(list(packs.glob(f'{kind}-*'))) if packs.exists() else 0}"
            d.mkdir(parents=True)
            (d / "hostile.toml").write_text(f'''
id = "hostile-{kind}"
title = "aims at a file outside sysfs"
livepatches = ["klptrace_lp"]
doc = "refused by the schema"
steps = [ {{ load = "klptrace_target" }}, {aim(name)} ]
expect = "% insmod klptrace_target.ko"
''')
    shipped = Path(__file__).resolve().parent.parent / "data" / "hostile-scenarios"
    dirs = [*sorted(packs.iterdir()), shipped]
    for d in dirs:
        p = subprocess.run([sys.executable, "-m", "klptrace", "run", "--scenarios", str(d),
                            "--modules", str(module_dir)], capture_output=True, text=True)
        assert p.returncode in (1, 2), (d, p.stderr)
        assert p.stderr.startswith("klptrace: error:") and "Traceback" not in p.stderr
        assert "Tracing livepatch events" not in p.stderr  # refused before any probe
        assert sentinel.read_text() == "untouched\n", d
        assert not _ours_left(), d
    # the writer, handed such paths directly, refuses them too
    for path in (f"/sys/module/klptrace_target/parameters/{rel}",
                 f"/sys/kernel/livepatch/{rel}/enabled", str(sentinel)):
        assert kmod.write(path, "x") != 0, path
    assert sentinel.read_text() == "untouched\n"
