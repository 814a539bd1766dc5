"""Ctrl-C and SIGTERM: raised as KeyboardInterrupt, but never in the middle of a held block."""

from __future__ import annotations

import signal
import threading

import pytest

from pipeline import interrupts


def test_sigterm_interrupts_like_ctrl_c() -> None:
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_a_held_block_finishes_before_the_interrupt_is_raised() -> None:
    done = []
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
            done.append("after the signal")  # still runs: the block is not cut in two
        done.append("never")  # the interrupt comes as the block ends
    assert done == ["after the signal"]


def test_a_signal_another_thread_receives_is_held_too() -> None:
    # BLAS threads may be the ones the kernel hands SIGTERM to; the handler runs on the main thread anyway
    done = []
    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.held():
        thread = threading.Thread(target=signal.raise_signal, args=(signal.SIGTERM,))
        thread.start()
        thread.join()
        sum(range(1000))  # bytecode runs, so the pending handler has run by now
        done.append("whole")
    assert done == ["whole"]
