"""Filesystem steps that cannot be half-done: signals that arrive while a run directory is moved into place wait until after the move."""

import os
import signal
import time

from runs import fill_with, tag_of

from lens_digits import rundir
from lens_digits.rundir import Reservation


def test_signals_arriving_during_the_move_are_delivered_after_it(tmp_path, monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    real_rename = os.rename

    def rename_with_signal(a, b):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [], "held back during the move"
        real_rename(a, b)

    monkeypatch.setattr(rundir.os, "rename", rename_with_signal)
    try:
        with Reservation(tmp_path / "run") as r:
            r.write(fill_with("x"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]
    assert tag_of(tmp_path / "run") == "x"
