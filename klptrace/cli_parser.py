"""klptrace's command line as argparse reads it: each command's options, and the checks of
their values while parsing (a usage error costs no download or boot)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from klptrace import __version__
from klptrace.commands import RUN_TIMEOUT_S, STALL_TIMEOUT_S
from klptrace.errors import KlptraceError
from klptrace.lab import defaults
from klptrace.report import FORMATS, STALL_FORMATS, TRACE_FORMATS

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

EPILOG = """\
examples:
  sudo klptrace run                    run every scenario (klptrace list) on this kernel
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
        self.exit(2, f"klptrace: error: {one_line(message)}\n"
                  f"  hint: see `{self.prog} --help`\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        """--help and --version: a full disk or a closed pipe is a KlptraceError, as for
        any other output (stderr, for usage errors, stays argparse's)."""
        from klptrace import files

        if file is sys.stdout:
            files.write_stdout(message)
        else:
            super()._print_message(message, file)


# --- option values, checked while parsing: a usage error costs no download or boot ---

#: upper bounds: a typo (an extra digit or ten) is a usage error, not hours of work or a
#: list of 10^20 scenarios built in memory
MAX_REPEAT = 1000
MAX_JOBS = 64  # guests at once, each with a vCPU and 512M at least
MAX_CPUS = 64  # a guest's vCPUs: more only slows an emulated (TCG) guest down
#: the longest wait any --timeout takes (a week): in milliseconds it still fits poll()'s
#: int (24 days), and it is a valid timeout for threading
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def one_line(text: str) -> str:
    """text with its control characters escaped: a value from the command line (a file
    name with a newline) cannot add lines to an error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(text: str) -> str:
    """An option's value in an error message: quoted, and cut short (5,000 digits)."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _whole(most: int) -> Callable[[str], int]:
    """An option value from 1 to most."""

    def whole(text: str) -> int:
        try:
            n = int(text)
        except ValueError:  # not a number, or thousands of digits
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least 1, not {_shown(text)}")
        if n > most:
            raise argparse.ArgumentTypeError(f"at most {most}, not {_shown(text)}")
        return n

    return whole


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        s = math.nan
    if not (math.isfinite(s) and s > 0):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0, not {_shown(text)}")
    if s > MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_TIMEOUT_S:.0f} seconds (a week), "
                                         f"not {_shown(text)}")
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

    try:
        why = files.output_problem(text)
    except OSError as e:  # a name too long, a loop of symbolic links
        why = f"{text}: {e.strerror}"
    if why:
        raise argparse.ArgumentTypeError(why)
    return text


def _kernel(text: str) -> str:
    """A --kernel value; its form is checked in the options (kernels.parse_spec's error)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value names no kernel")
    return text


def _patch(text: str) -> str:
    """A livepatch's name (a module name: never a path under /sys/kernel/livepatch)."""
    from klptrace import scenario

    if not scenario.is_module_name(text):
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is not a livepatch name ({scenario.MODULE_NAME_RULE})")
    return text


def _module(text: str) -> str:
    """A trace --module: a .ko file that exists, or a module name (never an option)."""
    from klptrace import trace

    try:
        return trace.module_spec(text)
    except KlptraceError as e:
        raise argparse.ArgumentTypeError(f"{e.message} ({e.hint})" if e.hint
                                         else e.message) from None


def _kcidb_origin(text: str) -> str:
    from klptrace.report.kcidb import ORIGIN_RE

    if not ORIGIN_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a KCIDB origin is lower-case letters, digits and _ (as KernelCI agreed it "
            f"with you), not {_shown(text)}")
    return text


# --- each command's options --------------------------------------------------------


def _add_kernel_option(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    p.add_argument(
        "--kernel", type=_kernel,
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

#: why `stall` has no --signal, for whoever knows kernels before v5.1
_NO_SIGNAL = ("no --signal: the kernel signals the remaining tasks itself at try 16 and "
              "every 15 tries after (transition.c); the `signal` attribute was removed by "
              "0b3d52790e1c (v5.1)\n\n")


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
        description="List the scenario ids and titles, in the order `run` runs them. Exit "
        "status: 0 listed, 1 a scenario file that is wrong, 2 a usage error.",
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
    p.add_argument("--jobs", type=_whole(MAX_JOBS), metavar="N",
                   help="with several --kernel, guests at once (default: what this host's "
                   f"cores and memory allow, said on stderr; at most {MAX_JOBS})")
    p.add_argument("--cpus", type=_whole(MAX_CPUS), metavar="N",
                   help=f"guest CPUs with --vm (default {defaults.CPUS}, at most {MAX_CPUS})")
    p.add_argument("--memory", type=_memory, metavar="SIZE",
                   help=f"guest memory with --vm (default {defaults.MEMORY}, at most 1T)")
    p.add_argument("--timeout", type=_seconds, default=RUN_TIMEOUT_S, metavar="S",
                   help=f"longest wait for one transition or unload (default {RUN_TIMEOUT_S:g})")
    p.add_argument("--modules", metavar="DIR", type=_directory,
                   help="built test modules (default: the cache)")
    p.add_argument("--repeat", type=_whole(MAX_REPEAT), default=1, metavar="N",
                   help=f"run the scenarios N times in a row (one BPF compile; at most "
                   f"{MAX_REPEAT})")
    p.add_argument("--allow-replace", action="store_true",
                   help="run atomic-replace even if other livepatches are enabled")
    # `run --vm` in the guest: each result to FILE as it finishes (JSON lines)
    p.add_argument("--stream", metavar="FILE", help=argparse.SUPPRESS)

    p = sub.add_parser(
        "stall", help="explain a stalled livepatch transition: which tasks, where, since when",
        description="Name the tasks that keep a livepatch transition from completing: "
        "each one's kind (kernel thread or user task), how it sleeps, the patched function "
        "it sits in, the kernel's reason, and the one next step that fits it on this kernel; "
        "and when the kernel's next round of fake signals comes. The first answer comes "
        "from /proc and sysfs, at once; --watch adds BPF and follows the transition to its "
        "end, with each signal round and the tasks that switched after it. klptrace never "
        "writes force. Exit status: 0 answered (with --watch: the transition completed), 1 "
        "still in transition when --watch timed out, a watch whose recording lost events or "
        "missed a probe, or an error, 2 a usage error, 4 "
        "nothing could run here (no root, no livepatch, no kprobes).",
        epilog=_NO_SIGNAL + _examples("sudo klptrace stall",
                                      "sudo klptrace stall klptrace_lp --format json",
                                      "sudo klptrace stall --wait --watch --timeout 60"),
        formatter_class=_RAW)
    p.add_argument("patch", nargs="?", metavar="PATCH", type=_patch,
                   help="the livepatch (default: the one in transition)")
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
        "COMMAND's; lost events or a probe that did not attach make it non-zero; with "
        "--expect, 1 on a mismatch. klptrace's own: 2 a usage error, 4 nothing could run "
        "here (no root, no livepatch, no kprobes).",
        epilog=_examples(
            "sudo klptrace trace --module ./my_lp.ko -- sh -c 'insmod my_lp.ko; "
            "echo 0 > /sys/kernel/livepatch/my_lp/enabled; rmmod my_lp'",
            "sudo klptrace trace --module my_lp --expect expected.txt --format ktap -- ./test.sh",
            "sudo klptrace trace --module my_lp --format json -o story.json"),
        formatter_class=_RAW)
    p.add_argument("--module", action="append", default=[], metavar="NAME|PATH.ko",
                   type=_module,
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
        "with BPF, and check them. Exit status: 0 success, 1 a failure or an error, 2 a "
        "usage error (found before anything is downloaded, booted or loaded), 4 nothing "
        "could run here (no root, no livepatch); each command's --help says which it uses.",
        epilog=EPILOG,
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"klptrace {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "kernel", help="fetch a guest kernel into the cache and show it",
        description="Download a stock Debian kernel's image, headers and kbuild packages into "
        "the cache (never installed: the host's /boot stays as it is) and print where they are. "
        "Exit status: 0 in the cache, 1 a failed download, 2 a usage error.",
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
        "kernel's headers or a kbuild directory, into the cache; print the .ko paths. Exit "
        "status: 0 built (or up to date), 1 a failed fetch or build, 2 a usage error.",
        epilog=_examples("klptrace build", "klptrace build --kernel 6.12",
                         "klptrace build --kdir /lib/modules/$(uname -r)/build"),
        formatter_class=_RAW)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--kernel", metavar="NAME|PATH", type=_kernel,
                       help="as for vm (default: the stock kernel of this host's Debian)")
    group.add_argument("--kdir", metavar="DIR", type=_directory,
                       help="a kernel build directory (headers)")

    p = sub.add_parser(
        "vm",
        help="boot a kernel in QEMU and run a command as root in it",
        description="Boot a guest kernel with the host's / shared copy-on-write, run CMD "
        "as root and stream its output. The exit status is CMD's, or klptrace's own: 1 the "
        "guest could not boot or run it (a panic, a timeout), 2 a usage error.",
        epilog=_examples("klptrace vm -- uname -r",
                         "klptrace vm --kernel 6.12 --cpus 1 --memory 2G -- dmesg",
                         "klptrace vm --rwdir results -- sh -c 'dmesg > results/dmesg.txt'",
                         "klptrace vm --timeout 600 -- .venv/bin/klptrace run"),
        formatter_class=_RAW,
    )
    _add_kernel_option(p)
    p.add_argument("--cpus", type=_whole(MAX_CPUS), metavar="N",
                   help=f"guest CPUs (default {defaults.CPUS}, at most {MAX_CPUS})")
    p.add_argument("--memory", type=_memory, metavar="SIZE",
                   help=f"guest memory (default {defaults.MEMORY}, at most 1T)")
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
