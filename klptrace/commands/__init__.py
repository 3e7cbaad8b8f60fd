"""The subcommands: one module each, a typed options dataclass in, an exit status out.

cli.py parses the command line into a module's options (options()) and calls its
run(); nothing else decides anything there. What several commands share is here:
what they say on stderr, which scenarios were asked for, and how a run document
is written out (Output, emit()).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from klptrace.errors import KlptraceError, interrupt
from klptrace.lab import defaults

if TYPE_CHECKING:
    from klptrace import scenario
    from klptrace.results import Matrix, RunDocument

T = TypeVar("T")

#: the longest `run` waits for one transition or unload; `stall` waits or watches
RUN_TIMEOUT_S = 120.0
STALL_TIMEOUT_S = 600.0


def say(msg: str) -> None:
    """A message of klptrace's own on stderr: "klptrace: msg"."""
    print(f"klptrace: {msg}", file=sys.stderr, flush=True)


def line(text: str) -> None:
    """A progress line on stderr, as it is (the startup line, a scenario's result)."""
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """SIGINT and SIGTERM unwind like Ctrl-C while the block runs, so every cleanup runs
    (errors.interrupt); the old handlers are put back after."""
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


#: what the parser keeps in the namespace besides options: the subcommand's name
PARSER_KEYS = frozenset({"cmd"})


def options(cls: type[T], namespace: Any) -> T:
    """The options dataclass cls, from the parsed attributes of the same names. A parsed
    option that cls has no field for is a bug (it would be dropped unseen): TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in vars(namespace).items() if k not in PARSER_KEYS}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for {', '.join(unknown)}")
    return cls(**given)


def guest_size(cpus: int | None, memory: str | None) -> tuple[int, str]:
    """A lab guest's vCPUs and memory: --cpus and --memory, else lab/defaults.py's. The one
    place the defaults are applied (`vm`, `run --vm`, each kernel of a matrix)."""
    return (defaults.CPUS if cpus is None else cpus,
            defaults.MEMORY if memory is None else memory)


def scenarios_for(ids: list[str], directory: str | None) -> list[scenario.Scenario]:
    """The selected scenarios from klptrace's own set or a user's directory."""
    from klptrace import scenario

    return scenario.select(scenario.load_dir(directory or scenario.BUILTIN_DIR), ids)


@dataclasses.dataclass
class Output:
    """Where a run document goes and in which format."""

    format: str = "text"
    output: str | None = None  # -o FILE, else stdout
    record: str | None = None  # --record FILE: the JSON document too
    kcidb_origin: str = "klptrace"


def emit(doc: RunDocument | Matrix, out: Output) -> int:
    """Save (--record) and render the document; its exit status."""
    from klptrace import files, report

    data = doc.to_json()
    failed: KlptraceError | None = None
    if out.record:
        try:
            files.write_text(out.record, json.dumps(data, indent=1, allow_nan=False) + "\n")
        except KlptraceError as e:
            failed = e  # the results still go where they were asked to
    text = report.render(out.format, doc, kcidb_origin=out.kcidb_origin)
    if out.output:
        files.write_text(out.output, text)
    else:
        files.write_stdout(text)
    if failed:
        raise failed
    return doc.exit_status()
