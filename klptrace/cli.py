"""klptrace's command line: parse, dispatch, exit code; nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from klptrace import __version__
from klptrace.errors import KlptraceError

EPILOG = """\
examples:
  klptrace kernel                      fetch Debian 12's stock 6.1 kernel into the cache
  klptrace build                       build modules/ against it
  klptrace vm -- uname -r              boot it and run a command as root in the guest
  klptrace vm --rwdir results -- sh -c 'dmesg > results/dmesg.txt'
"""


def _say(msg: str) -> None:
    print(f"klptrace: {msg}", file=sys.stderr, flush=True)


def _add_kernel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kernel",
        metavar="VERSION|PATH",
        help="6.1 (default: Debian 12's stock kernel), a release such as 6.1.0-56-amd64, "
        "or a vmlinuz path with ../lib/modules beside it",
    )


def _cmd_kernel(args: argparse.Namespace) -> int:
    from klptrace import kernels

    said: list[str] = []

    def progress(msg: str) -> None:
        said.append(msg)
        _say(msg)

    k = kernels.ensure(args.kernel, refresh=args.refresh, progress=progress)
    if not said:
        _say(f"kernel {k.release}: in the cache, nothing downloaded")
    print(f"release  {k.release}")
    print(f"image    {k.image}")
    print(f"modules  {k.modules_dir}")
    print(f"kdir     {k.kdir or '(no headers)'}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from klptrace import build, kernels

    if args.kdir:
        built = build.build(kdir=Path(args.kdir))
    else:
        built = build.build(kernels.ensure(args.kernel, progress=_say))
    state = "built" if built.rebuilt else "up to date, nothing rebuilt"
    _say(f"modules for {built.release}: {state} in {built.dir}")
    for ko in built.modules:
        print(ko)
    return 0


def _cmd_vm(args: argparse.Namespace) -> int:
    from klptrace import kernels, vm

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise KlptraceError("no command to run in the guest", hint="klptrace vm -- CMD ...")
    vm.check_host()  # before a kernel download that would be for nothing
    kernel = kernels.ensure(args.kernel, progress=_say)
    return vm.run(
        kernel,
        command,
        cpus=args.cpus,
        memory=args.memory,
        timeout=args.timeout,
        rwdirs=[Path(d) for d in args.rwdir],
        say=_say,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klptrace",
        description="Record the Linux kernel livepatch core's callbacks and transitions "
        "with BPF, and check them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"klptrace {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("kernel", help="fetch a guest kernel into the cache and show it")
    _add_kernel_option(p)
    p.add_argument("--refresh", action="store_true", help="re-read the package lists first")
    p.set_defaults(func=_cmd_kernel)

    p = sub.add_parser("build", help="build the test modules against a kernel's headers")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--kernel", metavar="VERSION|PATH", help="as for vm (default: 6.1)")
    group.add_argument("--kdir", metavar="DIR", help="a kernel build directory (headers)")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "vm",
        help="boot a kernel in QEMU and run a command as root in it",
        description="Boot a guest kernel with the host's / shared copy-on-write, run CMD "
        "as root, stream its output and exit with its status.",
    )
    _add_kernel_option(p)
    p.add_argument("--cpus", type=int, default=2, metavar="N", help="guest CPUs (default 2)")
    p.add_argument("--memory", default="4G", metavar="SIZE", help="guest memory (default 4G)")
    p.add_argument(
        "--timeout", type=float, default=1800.0, metavar="S",
        help="give up on the guest after S seconds (default 1800)",
    )  # fmt: skip
    p.add_argument(
        "--rwdir", action="append", default=[], metavar="DIR",
        help="a host directory the guest writes through to (repeatable)",
    )  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_cmd_vm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run klptrace; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except KlptraceError as err:
        print(f"klptrace: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  hint: {err.hint}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print("klptrace: interrupted", file=sys.stderr)
        return 130
