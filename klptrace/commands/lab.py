"""`klptrace kernel`, `build` and `vm`: the kernel lab from the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from klptrace import files
from klptrace.commands import guest_size, say, signals_unwind
from klptrace.errors import UsageError
from klptrace.lab import defaults

if TYPE_CHECKING:
    from klptrace.lab import kernels as kernels_t


def _known_form(spec: str | None) -> None:
    """UsageError for a --kernel of no form klptrace knows, before the host or the
    network is looked at."""
    from klptrace.lab import kernels

    if spec is not None:
        kernels.parse_spec(spec)


@dataclasses.dataclass
class KernelOptions:
    kernel: str | None = None
    refresh: bool = False
    list: bool = False

    def __post_init__(self) -> None:
        _known_form(self.kernel)


def kernel(opts: KernelOptions) -> int:
    """Fetch a guest kernel into the cache (if it is not there) and say where it is."""
    from klptrace.lab import kernels

    if opts.list:
        if opts.kernel:
            raise UsageError("--list shows every suite's kernels, not one --kernel",
                             hint="klptrace kernel --list, or klptrace kernel --kernel NAME")
        for text in list_lines(kernels.carried(refresh=opts.refresh, progress=say)):
            print(text)
        say("a release is the version and its flavour: 6.12.117+deb13 under rt is "
            "6.12.117+deb13-rt-amd64; --kernel NAME-rt or NAME-cloud picks a flavour "
            "(trixie-rt, latest-cloud, 7.3-rt)")
        return 0
    said: list[str] = []

    def progress(msg: str) -> None:
        said.append(msg)
        say(msg)

    k = kernels.ensure(opts.kernel, refresh=opts.refresh, progress=progress)
    if not any(m.startswith("downloading") for m in said):
        say(f"kernel {k.release}: in the cache, nothing downloaded")
    files.write_stdout(f"release  {k.release}\n"
                       f"suite    {k.suite or '(not known: not fetched from a suite)'}\n"
                       f"image    {k.image}\nmodules  {k.modules_dir}\n"
                       f"kdir     {k.kdir or '(no headers)'}\n")
    return 0


def list_lines(table: list[kernels_t.SuiteKernels]) -> list[str]:
    """`kernel --list`: one line per suite, the release of each flavour (its ABI part:
    6.12.117+deb13 under rt is 6.12.117+deb13-rt-amd64), the name that reaches it."""
    from klptrace.lab import kernels

    flavours = list(kernels.FLAVOURS)

    def abi(suite: kernels_t.SuiteKernels, flavour: str) -> str:
        cand = suite.releases[flavour]
        if cand is None:
            return "-"
        return cand.release.removesuffix("-" + kernels.FLAVOURS[flavour])

    rows = [["suite", "--kernel", *flavours]]
    rows += [[s.suite, s.name, *(abi(s, f) for f in flavours)] for s in table]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    return lines


@dataclasses.dataclass
class BuildOptions:
    kernel: str | None = None
    kdir: str | None = None

    def __post_init__(self) -> None:
        _known_form(self.kernel)


def build(opts: BuildOptions) -> int:
    """Build klptrace's test modules for a cached kernel (or a kbuild directory)."""
    from klptrace import assets
    from klptrace.lab import kernels

    if opts.kdir:
        built = assets.build_modules(kdir=Path(opts.kdir), say=say)
    else:
        built = assets.build_modules(kernels.ensure(opts.kernel, progress=say), say=say)
    state = "built" if built.rebuilt else "up to date, nothing rebuilt"
    say(f"modules for {built.release}: {state} in {built.dir}")
    files.write_stdout("".join(f"{ko}\n" for ko in built.modules))
    return 0


@dataclasses.dataclass
class VmOptions:
    kernel: str | None = None
    cpus: int | None = None  # None: not given (guest_size applies the default)
    memory: str | None = None
    timeout: float = defaults.TIMEOUT_S
    rwdir: list[str] = dataclasses.field(default_factory=list)
    command: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _known_form(self.kernel)


def vm(opts: VmOptions) -> int:
    """Boot the kernel and run the command in the guest: its exit status."""
    from klptrace.guest import vcpus
    from klptrace.lab import kernels
    from klptrace.lab import vm as lab_vm

    command = opts.command[1:] if opts.command[:1] == ["--"] else list(opts.command)
    if not command:
        raise UsageError("no command to run in the guest", hint="klptrace vm -- CMD ...")
    lab_vm.check_host()  # before a kernel download that would be for nothing
    with signals_unwind():  # during the kernel fetch too (vm.run handles its own)
        k = kernels.ensure(opts.kernel, progress=say)
        cpus, memory = guest_size(opts.cpus, opts.memory)
        return lab_vm.run(k, command, cpus=cpus, memory=memory,
                          timeout=opts.timeout, rwdirs=[Path(d) for d in opts.rwdir], say=say,
                          cpus_for=vcpus.guest_cpus)
