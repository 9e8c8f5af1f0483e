"""Filesystem steps that cannot be half-done: a file written whole, and signals that arrive while a run directory is moved
into place delivered after the move."""

import os
import signal
import time

import pytest
from runs import fill_with, tag_of

from lens_digits.storage import atomic
from lens_digits.storage import reservation as rundir
from lens_digits.storage.reservation import Reservation


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


def test_write_file_is_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "grid.csv"
    atomic.write_file(path, b"old\n")
    mask = os.umask(0o027)
    try:
        atomic.write_file(path, b"new\n")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"new\n"
    assert (path.stat().st_mode & 0o777) == 0o640  # the umask's permissions, like any file the user makes
    assert os.listdir(tmp_path) == ["grid.csv"]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, b"half")
    assert path.read_bytes() == b"new\n"  # the old content stays
    assert os.listdir(tmp_path) == ["grid.csv"]  # and no temporary file is left
