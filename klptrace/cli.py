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
  sudo klptrace run                    run the 11 callback scenarios on this kernel
  klptrace run --vm                    the same in the lab VM (this Debian's stock kernel)
  klptrace run --vm --kernel latest    the same on the newest kernel Debian carries
  klptrace run --vm --kernel sid       ... on sid's (also: 6.1, 6.12, trixie, 7.3, a release)
  klptrace run --vm --format json -o r.json busy-target-module
  klptrace check r.json                re-check a saved run offline
  klptrace list                        the scenario ids
  klptrace kernel                      fetch the default kernel into the cache
  klptrace build                       build modules/ against it (host or build root)
  klptrace vm -- uname -r              boot it and run a command as root in the guest
  klptrace vm --rwdir results -- sh -c 'dmesg > results/dmesg.txt'
"""


def _say(msg: str) -> None:
    print(f"klptrace: {msg}", file=sys.stderr, flush=True)


def _add_kernel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kernel",
        metavar="NAME|PATH",
        help="a suite's kernel: 6.1 (bookworm), 6.12 (bookworm-backports), trixie, "
        "trixie-backports, sid (unstable); latest; an upstream version such as 7.3; a "
        "release such as 7.3.4+deb13-amd64; or a vmlinuz path with its modules beside it "
        "(default: the stock kernel of this host's Debian release)",
    )


def _cmd_kernel(args: argparse.Namespace) -> int:
    from klptrace import kernels

    said: list[str] = []

    def progress(msg: str) -> None:
        said.append(msg)
        _say(msg)

    k = kernels.ensure(args.kernel, refresh=args.refresh, progress=progress)
    if not any(m.startswith("downloading") for m in said):
        _say(f"kernel {k.release}: in the cache, nothing downloaded")
    print(f"release  {k.release}")
    print(f"suite    {k.suite or '(not known: not fetched from a suite)'}")
    print(f"image    {k.image}")
    print(f"modules  {k.modules_dir}")
    print(f"kdir     {k.kdir or '(no headers)'}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from klptrace import build, kernels

    if args.kdir:
        built = build.build(kdir=Path(args.kdir), say=_say)
    else:
        built = build.build(kernels.ensure(args.kernel, progress=_say), say=_say)
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


def _cmd_list(args: argparse.Namespace) -> int:
    from klptrace import commands

    sys.stdout.write(commands.list_text(commands.scenarios_for([], args.scenarios)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from klptrace import commands

    return commands.run_vm(args) if args.vm else commands.run_local(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from klptrace import commands

    return commands.check(args)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return n


def _cmd_stall(args: argparse.Namespace) -> int:
    from klptrace import stall_command

    return stall_command.run(args)


def _cmd_trace(args: argparse.Namespace) -> int:
    from klptrace import commands

    return commands.trace(args)


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json", "ktap", "junit"), default="text",
                   help="output format (default text)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")
    p.add_argument("--scenarios", metavar="DIR",
                   help="a directory of scenario files instead of klptrace's own")


def _add_run_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list the scenarios")
    p.add_argument("--scenarios", metavar="DIR", help="a directory of scenario files")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "run", help="run scenarios, record them with BPF and check them",
        description="Drive the kernel through livepatch scenarios while BPF records the "
        "livepatch core, and check the recorded order against the expected one. Exit "
        "status: 0 all passed, 1 a scenario failed or errored, 4 nothing could run here.",
        epilog="examples:\n  sudo klptrace run\n  klptrace run --vm --format ktap\n"
        "  klptrace run --vm --kernel 6.1 -o r.json --format json atomic-replace\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ids", nargs="*", metavar="ID", help="scenario ids (default: all)")
    _add_output_options(p)
    p.add_argument("--record", metavar="FILE", help="also save the recording (JSON) to FILE")
    p.add_argument("--vm", action="store_true", help="run in the lab VM, results brought back")
    _add_kernel_option(p)
    p.add_argument("--cpus", type=int, default=2, metavar="N", help="guest CPUs with --vm")
    p.add_argument("--memory", default="4G", metavar="SIZE", help="guest memory with --vm")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="longest wait for one transition or unload (default 120)")
    p.add_argument("--modules", metavar="DIR", help="built test modules (default: the cache)")
    p.add_argument("--repeat", type=_positive, default=1, metavar="N",
                   help="run the scenarios N times in a row (one BPF compile)")
    p.add_argument("--allow-replace", action="store_true",
                   help="run atomic-replace even if other livepatches are enabled")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "stall", help="explain a stalled livepatch transition: which tasks, where, since when",
        description="Name the tasks that keep a livepatch transition from completing, the "
        "patched function each sits in, the kernel's reason, and what to do next. The first "
        "answer comes from /proc and sysfs, at once; --watch adds BPF and follows the "
        "transition to its end.",
        epilog="examples:\n  sudo klptrace stall\n  sudo klptrace stall klptrace_lp --format json\n"
        "  sudo klptrace stall --wait --watch\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("patch", nargs="?", metavar="PATCH", help="the livepatch (default: the one "
                   "in transition)")
    p.add_argument("--watch", action="store_true", help="follow it live until it completes, "
                   "then print its timeline")
    p.add_argument("--wait", action="store_true", help="wait for a transition to start")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="give up waiting or watching after S seconds (default 600)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_stall)

    p = sub.add_parser(
        "trace", help="record what the livepatch core does while a command runs",
        description="Attach the probes, run COMMAND (or record until Ctrl-C) and print the "
        "livepatch events meanwhile, as the lines the kernel selftests expect in dmesg. "
        "Callbacks are traced for each --module, loaded or not yet. The exit status is "
        "COMMAND's; lost events or a probe that did not attach make it non-zero.",
        epilog="examples:\n  sudo klptrace trace --module ./my_lp.ko -- sh -c "
        "'insmod my_lp.ko; echo 0 > /sys/kernel/livepatch/my_lp/enabled; rmmod my_lp'\n"
        "  sudo klptrace trace --module my_lp --expect expected.txt --format ktap -- ./test.sh\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", action="append", default=[], metavar="NAME|PATH.ko",
                   help="a livepatch module whose callbacks to trace (repeatable)")
    p.add_argument("--format", choices=("transcript", "json", "ktap", "junit"),
                   default="transcript", help="output format (default transcript)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the output to FILE")
    p.add_argument("--expect", metavar="FILE", help="a transcript of what should happen "
                   "(# comments allowed): compare, print the diff, exit 1 on a mismatch")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("check", help="re-check a saved recording offline (no root)")
    p.add_argument("recording", metavar="RECORDING", help="a file from `run --record`")
    _add_output_options(p)
    p.add_argument("--record", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_check)


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
    group.add_argument("--kernel", metavar="NAME|PATH",
                       help="as for vm (default: the stock kernel of this host's Debian)")
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
    _add_run_commands(sub)
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
    except KeyboardInterrupt as err:
        name = getattr(err, "name", "SIGINT")
        print(f"klptrace: interrupted by {name}; cleaned up (anything left is named above)",
              file=sys.stderr)
        return int(getattr(err, "status", 130))
