"""klptrace's command line: parse (cli_parser.py), dispatch, exit code; nothing else."""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
from collections.abc import Sequence

from klptrace.cli_parser import build_parser, one_line
from klptrace.errors import KlptraceError, UsageError

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run klptrace; return the exit status."""
    _replace_unencodable()
    try:
        args = build_parser().parse_args(argv)
        _distinct_files(args)
    except KlptraceError as err:  # the files clash, or --help could not be written
        return _said(err)
    return _flushed(_dispatch(args))


def _replace_unencodable() -> None:
    """Write what the standard output's encoding (PYTHONIOENCODING=ascii, a C locale)
    cannot hold as backslash escapes, as stderr does, instead of a UnicodeEncodeError:
    HTML timelines and scenario titles may hold any character."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")


#: (option, its attribute): the files a command writes, and those it reads
_OUTPUTS = (("-o", "output"), ("--record", "record"), ("--stream", "stream"))
_INPUTS = (("RECORDING", "recording"), ("--expect", "expect"), ("--module", "module"))


def _distinct_files(args: argparse.Namespace) -> None:
    """UsageError if an output is one of the inputs, or another output: the output would
    overwrite the input before it is read, or one output the other."""
    def named(pairs: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        got = []
        for option, attr in pairs:
            value = getattr(args, attr, None)
            got += [(option, v) for v in (value if isinstance(value, list) else [value])
                    if v and (attr != "module" or os.sep in v or v.endswith(".ko"))]
        return got  # (a --module by name is no file here: modinfo finds it)

    outputs, inputs = named(_OUTPUTS), named(_INPUTS)
    for i, (option, path) in enumerate(outputs):
        for other, other_path in inputs + outputs[:i]:
            if _same_file(path, other_path):
                reads = (other, other_path) in inputs
                raise UsageError(
                    f"{option} {one_line(path)} is the file "
                    f"{'read as' if reads else 'written by'} {other} {one_line(other_path)}"
                    + (": it would be overwritten" if reads else ""),
                    f"write {option} to another file")


def _same_file(a: str, b: str) -> bool:
    """Whether a and b name one file: the same path once links are resolved, or the same
    inode (a hard link). A character device (/dev/null, a terminal) is never one file
    here: writing it twice overwrites nothing."""
    try:
        st_a, st_b = os.stat(a), os.stat(b)
    except OSError:  # one is yet to be created (or cannot be looked at): compare names
        return os.path.realpath(a) == os.path.realpath(b)
    if stat.S_ISCHR(st_a.st_mode):
        return False
    return (st_a.st_dev, st_a.st_ino) == (st_b.st_dev, st_b.st_ino)


def _said(err: KlptraceError) -> int:
    """err as klptrace's one error line (and its hint) on stderr; its exit status."""
    print(f"klptrace: error: {err.message}", file=sys.stderr)
    if err.hint:
        print(f"  hint: {err.hint}", file=sys.stderr)
    return err.status


def _flushed(status: int) -> int:
    """status, once the standard output is written out; 1 if it cannot be (a full disk)."""
    from klptrace import files

    try:
        if sys.stdout is not None:  # None: started with it closed, and nothing was written
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
        return _said(err)
    except KeyboardInterrupt as err:
        name = getattr(err, "name", "SIGINT")
        done = getattr(err, "done", "cleaned up (anything left is named above)")
        print(f"klptrace: interrupted by {name}; {done}", file=sys.stderr)
        return int(getattr(err, "status", 130))
