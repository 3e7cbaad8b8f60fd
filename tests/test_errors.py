"""Signals: a swallowed SIGTERM is raised again, but never in the middle of a cleanup."""

import signal

import pytest

from klptrace import errors


def test_swallowed_signal_is_raised_at_the_next_check() -> None:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:  # as inside a ctypes callback, which drops the exception
            errors.interrupt(signal.SIGTERM)
        except errors.Interrupted:
            pass
        with errors.signals_deferred():
            errors.check_interrupted()  # a cleanup is not interrupted
        with pytest.raises(errors.Interrupted) as e:
            errors.check_interrupted()
        assert e.value.status == 128 + signal.SIGTERM and e.value.name == "SIGTERM"
        errors.check_interrupted()  # raised once
    finally:
        for s, h in old.items():
            signal.signal(s, h)
