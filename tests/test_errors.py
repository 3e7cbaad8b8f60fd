"""Signals: a swallowed SIGTERM is raised again, but never in the middle of a cleanup."""

import signal
import sys

import pytest

from klptrace import errors


def test_swallowed_signal_is_raised_at_the_next_check() -> None:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        bcc_frame = compile("import klptrace.errors as e; e.interrupt(15, sys._getframe())",
                            "/usr/lib/python3/dist-packages/bcc/table.py", "exec")
        exec(bcc_frame, {"sys": __import__("sys")})  # inside bcc: only remembered
        with errors.signals_deferred():
            errors.check_interrupted()  # a cleanup is not interrupted
        with pytest.raises(errors.Interrupted) as e:
            errors.check_interrupted()
        assert e.value.status == 128 + signal.SIGTERM and e.value.name == "SIGTERM"
        errors.check_interrupted()  # raised once
        with pytest.raises(errors.Interrupted):  # elsewhere: at once
            errors.interrupt(signal.SIGINT, sys._getframe())
        errors.check_interrupted()  # and not again
    finally:
        for s, h in old.items():
            signal.signal(s, h)
