"""Signals: a swallowed SIGTERM is raised again, but never in the middle of a cleanup."""

import os
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
        with pytest.raises(errors.Interrupted) as e:
            with errors.signals_deferred():
                errors.check_interrupted()  # a cleanup is not interrupted...
            pytest.fail("not raised as the cleanup ended")  # ...but unwinds as it ends
        assert e.value.status == 128 + signal.SIGTERM and e.value.name == "SIGTERM"
        errors.check_interrupted()  # raised once
        with pytest.raises(errors.Interrupted):  # elsewhere: at once
            errors.interrupt(signal.SIGINT, sys._getframe())
        errors.check_interrupted()  # and not again
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@pytest.fixture
def handled():  # type: ignore[no-untyped-def]
    """SIGINT and SIGTERM handled as `klptrace run` handles them; put back after."""
    old = {s: signal.signal(s, errors.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    errors._pending_signal.clear()
    for s, h in old.items():
        signal.signal(s, h)


def test_a_checked_block_raises_a_signal_only_at_its_safe_points(handled: None) -> None:
    ran = []
    with pytest.raises(errors.Interrupted) as e, errors.signals_checked():
        os.kill(os.getpid(), signal.SIGTERM)
        ran.append("after the signal")  # not unwound between two statements
        with errors.signals_deferred():
            errors.check_interrupted()  # a call into the kernel: not a safe point
            ran.append("the call's record")
        ran.append("never")  # the end of the call was the safe point
    assert ran == ["after the signal", "the call's record"]
    assert e.value.status == 128 + signal.SIGTERM
    # one signal is enough: the next ones are ignored while the cleanup runs
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    errors.check_interrupted()  # raised once


def test_a_checked_block_raises_a_held_signal_as_it_ends(handled: None) -> None:
    with pytest.raises(errors.Interrupted) as e:
        with errors.signals_checked():
            os.kill(os.getpid(), signal.SIGINT)
            with errors.signals_deferred(), errors.signals_deferred():
                pass  # the inner block's end is no safe point: the outer still holds it
            raise ValueError("an error on its way out")
    assert e.value.name == "SIGINT"  # the signal decides the exit status


def test_a_cleanup_inside_a_checked_block_runs_to_its_end(handled: None) -> None:
    done = []
    with pytest.raises(errors.Interrupted), errors.signals_checked():
        with errors.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            errors.check_interrupted()
            done.append("cleanup")
    assert done == ["cleanup"]
