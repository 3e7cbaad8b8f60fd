"""klptrace's command line: parse, dispatch, exit code; nothing else."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from klptrace import __version__
from klptrace.commands import RUN_TIMEOUT_S, STALL_TIMEOUT_S
from klptrace.errors import KlptraceError
from klptrace.lab import defaults
from klptrace.report import FORMATS, STALL_FORMATS, TRACE_FORMATS

EPILOG = """\
examples:
  sudo klptrace run                    run the 11 callback scenarios on this kernel
  klptrace run --vm                    the same in the lab VM (this Debian's stock kernel)
  klptrace run --vm --kernel latest    the same on the newest kernel Debian carries
  klptrace run --vm --kernel sid       ... on sid's (also: 6.1, 6.12, trixie, 7.3, a release)
  klptrace run --vm --kernel trixie-rt ... on trixie's PREEMPT_RT kernel (flavours: rt, cloud)
  klptrace run --vm --format json -o r.json busy-target-module
  klptrace check r.json                re-check a saved run offline
  klptrace list                        the scenario ids
  klptrace kernel                      fetch the default kernel into the cache
  klptrace build                       build modules/ against it (host or build root)
  klptrace vm -- uname -r              boot it and run a command as root in the guest
  klptrace vm --rwdir results -- sh -c 'dmesg > results/dmesg.txt'
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with klptrace's form of an error: one line and a hint, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"klptrace: error: {message}\n  hint: see `{self.prog} --help`\n")


# --- option values, checked while parsing: a usage error costs no download or boot ---


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not (math.isfinite(s) and s > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return s


def _memory(text: str) -> str:
    """A guest memory size that vm.run will accept (vm imports only the stdlib and kernels)."""
    from klptrace.lab import vm

    try:
        vm.parse_memory(text)
    except KlptraceError as e:
        raise argparse.ArgumentTypeError(f"{e.message} ({e.hint})") from None
    return text


def _directory(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def _output(text: str) -> str:
    """A file klptrace can create or overwrite, checked before the work that fills it."""
    from klptrace import files

    why = files.output_problem(text)
    if why:
        raise argparse.ArgumentTypeError(why)
    return text


def _add_kernel_option(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    p.add_argument(
        "--kernel",
        metavar="NAME|PATH",
        action="append" if repeatable else "store", default=[] if repeatable else None,
        help="a suite's kernel: 6.1 (bookworm), 6.12 (bookworm-backports), trixie, "
        "trixie-backports, sid (unstable), experimental (next: only when newer than "
        "latest); latest; an upstream version such as 7.3; each of these with a flavour "
        "-rt or -cloud (trixie-rt, latest-cloud; amd64, the generic one, is the default); a "
        "release such as 7.3.4+deb13-amd64 or 6.12.117+deb13-rt-amd64; or a vmlinuz path "
        "with its modules and config beside it (default: the stock kernel of this host's "
        "Debian release; `klptrace kernel --list` shows what each suite carries)"
        + ("; repeat it for a matrix of kernels, one guest each" if repeatable else ""),
    )


def _examples(*lines: str) -> str:
    """An epilog of examples, as at the end of every subcommand's --help."""
    return "examples:\n" + "".join(f"  {line}\n" for line in lines)


_RAW = argparse.RawDescriptionHelpFormatter

#: subcommand -> (module of klptrace.commands, its options class, its function); the
#: module is imported only for the command that runs (stall must start fast)
COMMANDS = {
    "list": ("list_", "ListOptions", "run"),
    "run": ("run", "RunOptions", "run"),
    "check": ("check", "CheckOptions", "run"),
    "trace": ("trace", "TraceOptions", "run"),
    "stall": ("stall", "StallOptions", "run"),
    "kernel": ("lab", "KernelOptions", "kernel"),
    "build": ("lab", "BuildOptions", "build"),
    "vm": ("lab", "VmOptions", "vm"),
}


def _kcidb_origin(text: str) -> str:
    from klptrace.report.kcidb import ORIGIN_RE

    if not ORIGIN_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a KCIDB origin is lower-case letters, digits and _ (as KernelCI agreed it "
            f"with you), not {text!r}")
    return text


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="output format (default text; html: one page with a timeline per "
                   "scenario; kcidb: KernelCI's KCIDB schema; trace-event: for Perfetto's UI "
                   "and chrome://tracing)")
    p.add_argument("--kcidb-origin", metavar="NAME", type=_kcidb_origin, default="klptrace",
                   help="the origin of --format kcidb ids (default klptrace)")
    p.add_argument("-o", "--output", metavar="FILE", type=_output,
                   help="write the output to FILE")
    p.add_argument("--scenarios", metavar="DIR", type=_directory,
                   help="a directory of scenario files instead of klptrace's own")


def _add_run_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "list", help="list the scenarios",
        description="List the scenario ids and titles, in the order `run` runs them.",
        epilog=_examples("klptrace list", "klptrace list --scenarios ./my-scenarios"),
        formatter_class=_RAW)
    p.add_argument("--scenarios", metavar="DIR", type=_directory,
                   help="a directory of scenario files")

    p = sub.add_parser(
        "run", help="run scenarios, record them with BPF and check them",
        description="Drive the kernel through livepatch scenarios while BPF records the "
        "livepatch core, and check the recorded order against the expected one. Exit "
        "status: 0 all passed, 1 a scenario failed or errored, 4 nothing could run here, "
        "2 a usage error.",
        epilog=_examples(
            "sudo klptrace run", "klptrace run --vm --format ktap",
            "klptrace run --vm --kernel 6.1 -o r.json --format json atomic-replace",
            "klptrace run --vm --cpus 1 --memory 2G --record rec.json",
            "sudo klptrace run --scenarios ./my-scenarios --modules ./my-modules"),
        formatter_class=_RAW)
    p.add_argument("ids", nargs="*", metavar="ID", help="scenario ids (default: all)")
    _add_output_options(p)
    p.add_argument("--record", metavar="FILE", type=_output,
                   help="also save the recording (JSON) to FILE")
    p.add_argument("--vm", action="store_true", help="run in the lab VM, results brought back")
    _add_kernel_option(p, repeatable=True)
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="with several --kernel, guests at once (default: what this host's "
                   "cores and memory allow, said on stderr)")
    p.add_argument("--cpus", type=_positive, metavar="N",
                   help=f"guest CPUs with --vm (default {defaults.CPUS})")
    p.add_argument("--memory", type=_memory, metavar="SIZE",
                   help=f"guest memory with --vm (default {defaults.MEMORY})")
    p.add_argument("--timeout", type=_seconds, default=RUN_TIMEOUT_S, metavar="S",
                   help=f"longest wait for one transition or unload (default {RUN_TIMEOUT_S:g})")
    p.add_argument("--modules", metavar="DIR", type=_directory,
                   help="built test modules (default: the cache)")
    p.add_argument("--repeat", type=_positive, default=1, metavar="N",
                   help="run the scenarios N times in a row (one BPF compile)")
    p.add_argument("--allow-replace", action="store_true",
                   help="run atomic-replace even if other livepatches are enabled")
    # `run --vm` in the guest: each result to FILE as it finishes (JSON lines)
    p.add_argument("--stream", metavar="FILE", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "stall", help="explain a stalled livepatch transition: which tasks, where, since when",
        description="Name the tasks that keep a livepatch transition from completing, the "
        "patched function each sits in, the kernel's reason, and what to do next. The first "
        "answer comes from /proc and sysfs, at once; --watch adds BPF and follows the "
        "transition to its end.",
        epilog=_examples("sudo klptrace stall", "sudo klptrace stall klptrace_lp --format json",
                         "sudo klptrace stall --wait --watch --timeout 60"),
        formatter_class=_RAW)
    p.add_argument("patch", nargs="?", metavar="PATCH", help="the livepatch (default: the one "
                   "in transition)")
    p.add_argument("--watch", action="store_true", help="follow it live until it completes, "
                   "then print its timeline")
    p.add_argument("--wait", action="store_true", help="wait for a transition to start")
    p.add_argument("--timeout", type=_seconds, default=STALL_TIMEOUT_S, metavar="S",
                   help=f"give up waiting or watching after S seconds (default "
                   f"{STALL_TIMEOUT_S:g})")
    p.add_argument("--format", choices=STALL_FORMATS, default="text",
                   help="output format (default text; html, with --watch: the timeline page)")
    p.add_argument("-o", "--output", metavar="FILE", type=_output,
                   help="write the output to FILE")

    p = sub.add_parser(
        "trace", help="record what the livepatch core does while a command runs",
        description="Attach the probes, run COMMAND (or record until Ctrl-C) and print the "
        "livepatch events meanwhile, as the lines the kernel selftests expect in dmesg. "
        "Callbacks are traced for each --module, loaded or not yet. The exit status is "
        "COMMAND's; lost events or a probe that did not attach make it non-zero.",
        epilog=_examples(
            "sudo klptrace trace --module ./my_lp.ko -- sh -c 'insmod my_lp.ko; "
            "echo 0 > /sys/kernel/livepatch/my_lp/enabled; rmmod my_lp'",
            "sudo klptrace trace --module my_lp --expect expected.txt --format ktap -- ./test.sh",
            "sudo klptrace trace --module my_lp --format json -o story.json"),
        formatter_class=_RAW)
    p.add_argument("--module", action="append", default=[], metavar="NAME|PATH.ko",
                   help="a livepatch module whose callbacks to trace (repeatable)")
    p.add_argument("--format", choices=TRACE_FORMATS,
                   default="transcript", help="output format (default transcript)")
    p.add_argument("-o", "--output", metavar="FILE", type=_output,
                   help="write the output to FILE")
    p.add_argument("--expect", metavar="FILE", help="a transcript of what should happen "
                   "(# comments allowed): compare, print the diff, exit 1 on a mismatch")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    p = sub.add_parser(
        "check", help="re-check a saved recording offline (no root)",
        description="Check a saved run (`run --record FILE`, or `run --format json`) again "
        "against the scenarios' expected orders, with no kernel and no root, and render it "
        "in any format. Exit status as for run.",
        epilog=_examples("klptrace check rec.json", "klptrace check rec.json --format junit "
                         "-o junit.xml", "klptrace check rec.json --scenarios ./my-scenarios"),
        formatter_class=_RAW)
    p.add_argument("recording", metavar="RECORDING", help="a file from `run --record`")
    _add_output_options(p)
    p.add_argument("--record", type=_output, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="klptrace",
        description="Record the Linux kernel livepatch core's callbacks and transitions "
        "with BPF, and check them.",
        epilog=EPILOG,
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"klptrace {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "kernel", help="fetch a guest kernel into the cache and show it",
        description="Download a stock Debian kernel's image, headers and kbuild packages into "
        "the cache (never installed: the host's /boot stays as it is) and print where they are.",
        epilog=_examples("klptrace kernel", "klptrace kernel --kernel 6.12",
                         "klptrace kernel --kernel trixie-rt", "klptrace kernel --list",
                         "klptrace kernel --refresh"),
        formatter_class=_RAW)
    _add_kernel_option(p)
    p.add_argument("--refresh", action="store_true", help="re-read the package lists first")
    p.add_argument("--list", action="store_true",
                   help="list every suite's kernel of each flavour, download nothing")

    p = sub.add_parser(
        "build", help="build the test modules against a kernel's headers",
        description="Build klptrace's test modules (modules/) on the host against a cached "
        "kernel's headers or a kbuild directory, into the cache; print the .ko paths.",
        epilog=_examples("klptrace build", "klptrace build --kernel 6.12",
                         "klptrace build --kdir /lib/modules/$(uname -r)/build"),
        formatter_class=_RAW)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--kernel", metavar="NAME|PATH",
                       help="as for vm (default: the stock kernel of this host's Debian)")
    group.add_argument("--kdir", metavar="DIR", type=_directory,
                       help="a kernel build directory (headers)")

    p = sub.add_parser(
        "vm",
        help="boot a kernel in QEMU and run a command as root in it",
        description="Boot a guest kernel with the host's / shared copy-on-write, run CMD "
        "as root, stream its output and exit with its status.",
        epilog=_examples("klptrace vm -- uname -r",
                         "klptrace vm --kernel 6.12 --cpus 1 --memory 2G -- dmesg",
                         "klptrace vm --rwdir results -- sh -c 'dmesg > results/dmesg.txt'",
                         "klptrace vm --timeout 600 -- .venv/bin/klptrace run"),
        formatter_class=_RAW,
    )
    _add_kernel_option(p)
    p.add_argument("--cpus", type=_positive, default=defaults.CPUS, metavar="N",
                   help=f"guest CPUs (default {defaults.CPUS})")
    p.add_argument("--memory", type=_memory, default=defaults.MEMORY, metavar="SIZE",
                   help=f"guest memory (default {defaults.MEMORY})")
    p.add_argument(
        "--timeout", type=_seconds, default=defaults.TIMEOUT_S, metavar="S",
        help=f"give up on the guest after S seconds (default {defaults.TIMEOUT_S:g})",
    )  # fmt: skip
    p.add_argument(
        "--rwdir", action="append", default=[], metavar="DIR",
        help="a host directory the guest writes through to (repeatable)",
    )  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    _add_run_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run klptrace; return the exit status."""
    args = build_parser().parse_args(argv)
    return _flushed(_dispatch(args))


def _flushed(status: int) -> int:
    """status, once the standard output is written out; 1 if it cannot be (a full disk)."""
    from klptrace import files

    try:
        sys.stdout.flush()
    except OSError as e:
        files.discard_stdout()
        print(f"klptrace: error: cannot write the standard output: {e.strerror}\n"
              "  hint: write to a file with -o FILE", file=sys.stderr)
        return status or 1
    return status


def _dispatch(args: argparse.Namespace) -> int:
    """The subcommand's exit status; a KlptraceError becomes its one-line message."""
    import importlib

    from klptrace.commands import options

    module_name, options_class, function = COMMANDS[args.cmd]
    try:
        module = importlib.import_module(f"klptrace.commands.{module_name}")
        status: int = getattr(module, function)(options(getattr(module, options_class), args))
        return status
    except KlptraceError as err:
        print(f"klptrace: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  hint: {err.hint}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt as err:
        name = getattr(err, "name", "SIGINT")
        done = getattr(err, "done", "cleaned up (anything left is named above)")
        print(f"klptrace: interrupted by {name}; {done}", file=sys.stderr)
        return int(getattr(err, "status", 130))
