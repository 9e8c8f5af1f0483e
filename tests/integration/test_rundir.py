"""Run directories: never over what the package did not write, atomic, one winner per folder, no litter.

The race and crash tests run small writer processes that import only
``lens_digits.storage.reservation`` (no torch), so that many trials stay fast.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from runs import fill_with, tag_of

from lens_digits.errors import OutputError
from lens_digits.storage import atomic, paths
from lens_digits.storage import reservation as rundir
from lens_digits.storage.paths import check_output, is_run_directory
from lens_digits.storage.reservation import Reservation


def fake_run(folder: Path, tag: str = "old") -> Path:
    """A run directory as the package writes it, with a tag to tell runs apart."""
    folder.mkdir(parents=True)
    for name in paths.RUN_FILES:
        (folder / name).write_text(tag)
    (folder / "run.json").write_text(json.dumps({"format": paths.RUN_FORMAT, "tag": tag}))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- what --overwrite may replace ------------------------------------------------------------


@pytest.fixture
def home_and_project(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    project = home / "work" / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    return home, project


@pytest.mark.parametrize("out", [".", "", "~", "..", "../..", "./", "~/work", "/"])
def test_overwrite_never_touches_the_working_directory_its_parents_or_home(home_and_project, out):
    home, project = home_and_project
    before = snapshot(home)
    with pytest.raises(OutputError, match="working directory|home folder|filesystem root|name is empty"):
        check_output(out, overwrite=True)
    with pytest.raises(OutputError):
        with Reservation(out, overwrite=True) as r:
            r.write(fill_with("new"))
    assert snapshot(home) == before


def test_overwrite_refuses_a_folder_the_package_did_not_write(tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not written by lens-digits.*notes.txt"):
        with Reservation(mine, overwrite=True) as r:
            r.write(fill_with("new"))
    assert (mine / "notes.txt").read_text() == "keep me"
    # a run directory with a file of the user's added is not ours to replace either
    run = fake_run(tmp_path / "run")
    (run / "analysis.ipynb").write_text("{}")
    with pytest.raises(OutputError, match="analysis.ipynb"):
        check_output(run, overwrite=True)
    # a run.json that is not ours
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"something": "else"}')
    assert not is_run_directory(other)


def test_overwrite_replaces_a_run_directory_and_keeps_its_permissions(tmp_path):
    run = fake_run(tmp_path / "run", "old")
    run.chmod(0o755)
    with Reservation(run, overwrite=True) as r:
        r.write(fill_with("new"))
    assert tag_of(run) == "new"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_new_run_directory_gets_the_umask_permissions_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        with Reservation(tmp_path / "a" / "b", overwrite=False) as r:
            out = r.write(fill_with("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "grid.csv").stat().st_mode) == 0o644


def test_without_overwrite_a_non_empty_folder_is_refused_and_an_empty_one_is_used(tmp_path):
    run = fake_run(tmp_path / "run")
    with pytest.raises(OutputError, match="not empty.*--overwrite"):
        Reservation(run).acquire()
    assert tag_of(run) == "old"
    empty = tmp_path / "empty"
    empty.mkdir()
    with Reservation(empty) as r:
        r.write(fill_with("new"))
    assert tag_of(empty) == "new"


def test_a_users_dot_old_sibling_is_never_deleted(tmp_path):
    users = tmp_path / ".run.old"
    users.mkdir()
    (users / "precious.txt").write_text("x")
    tmp_like = tmp_path / ".run.lens-digits-1-abc.tmp"  # our naming, but no marker: not ours
    tmp_like.mkdir()
    (tmp_like / "precious.txt").write_text("y")
    with Reservation(tmp_path / "run") as r:
        r.write(fill_with("first"))
    with Reservation(tmp_path / "run", overwrite=True) as r:
        r.write(fill_with("second"))
    assert (users / "precious.txt").read_text() == "x"
    assert (tmp_like / "precious.txt").read_text() == "y"


def test_a_folder_that_appears_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "run"
    with Reservation(out) as r:
        out.mkdir()  # someone else's program fills it meanwhile
        (out / "theirs.txt").write_text("theirs")
        with pytest.raises(OutputError, match="while this run computed; nothing was replaced"):
            r.write(fill_with("mine"))
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_files_are_flushed_before_the_move(tmp_path, monkeypatch):
    events = []
    real_tree, real_rename = atomic.fsync_tree, os.rename
    monkeypatch.setattr(atomic, "fsync_tree", lambda folder: (events.append(("fsync", folder.name)), real_tree(folder)))
    monkeypatch.setattr(rundir.os, "rename", lambda a, b: (events.append(("rename", Path(a).name)), real_rename(a, b)))
    with Reservation(tmp_path / "run") as r:
        r.write(fill_with("x"))
    assert [e[0] for e in events] == ["fsync", "rename"] and events[0][1] == events[1][1]


def test_replace_without_renameat2_still_leaves_no_litter(tmp_path, monkeypatch):
    def unsupported(a, b):
        raise NotImplementedError("no exchange here")

    monkeypatch.setattr(atomic, "exchange", unsupported)
    run = fake_run(tmp_path / "run", "old")
    with Reservation(run, overwrite=True) as r:
        r.write(fill_with("new"))
    assert tag_of(run) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_old_run_moved_aside_by_a_dead_replace_is_restored(tmp_path):
    # The fallback replace died between its two renames: the old run is aside and the target is missing.
    fake_run(tmp_path / ".run.lens-digits-4242.old", "old")
    with Reservation(tmp_path / "run", overwrite=True):
        pass
    assert tag_of(tmp_path / "run") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failed_fill_leaves_nothing_and_parents_made_for_it_are_removed(tmp_path):
    def boom(tmp):
        (tmp / "grid.csv").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        with Reservation(tmp_path / "a" / "b" / "run") as r:
            r.write(boom)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        Reservation(blocker / "run").acquire()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        with pytest.raises(OutputError, match="not writable"):
            Reservation(locked / "run").acquire()


# ---- one winner, nothing lost ------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from lens_digits.storage.reservation import Reservation
    from lens_digits.storage.paths import RUN_FILES, RUN_FORMAT
    from lens_digits.errors import OutputError
    out, tag, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    def fill(tmp):
        for name in RUN_FILES:
            (tmp / name).write_text(tag)
        (tmp / "run.json").write_text(json.dumps({"format": RUN_FORMAT, "tag": tag}))
    try:
        with Reservation(out) as r:
            time.sleep(delay)  # the compute
            r.write(fill)
    except OutputError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    print("wrote", out)
    """
)


def test_two_runs_into_one_new_folder_have_exactly_one_winner(tmp_path):
    assert (
        "torch"
        not in subprocess.run(
            [sys.executable, "-c", "import sys, lens_digits.storage.reservation; print(' '.join(sys.modules))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    ), "the writer must stay light"
    for trial in range(12):
        out = tmp_path / f"run{trial}"
        delay = ("0.3", "0.3") if trial % 2 else ("0", "0.05")
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(out), tag, d], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for tag, d in zip(("A", "B"), delay, strict=True)
        ]
        results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        winner = "AB"[[code for code, _, _ in results].index(0)]
        loser_err = next(err for code, _, err in results if code == 2)
        assert "another lens-digits run" in loser_err or "not empty" in loser_err, loser_err
        assert tag_of(out) == winner
    assert {p.name for p in tmp_path.iterdir()} == {f"run{i}" for i in range(12)}, "no lock files or temporary folders left"


def test_a_second_run_fails_at_once_while_the_first_computes(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "A", "5"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        lock = tmp_path / ".run.lens-digits.lock"
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.05)
        started = time.time()
        second = subprocess.run([sys.executable, "-c", WRITER, str(out), "B", "0"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr
        assert time.time() - started < 4.5, "the loser must not wait for the winner's compute"
    finally:
        assert first.wait(timeout=60) == 0
    assert tag_of(out) == "A"


# ---- crashes and signals -----------------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from lens_digits.storage import atomic, paths
    from lens_digits.storage import reservation as rundir
    from lens_digits.cli import _raise_interrupted
    signal.signal(signal.SIGTERM, _raise_interrupted)
    out, where, overwrite = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def fill(tmp):
        (tmp / "grid.csv").write_text("new")
        if where == "fill":
            print("FILLING", flush=True)
            time.sleep(60)
        for name in paths.RUN_FILES[1:]:
            (tmp / name).write_text("new")
        (tmp / "run.json").write_text(json.dumps({"format": paths.RUN_FORMAT, "tag": "new"}))
    if where == "exchange":
        from lens_digits.storage import atomic
        real = atomic.exchange
        def exchange_then_die(a, b):
            real(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        atomic.exchange = exchange_then_die
    try:
        with rundir.Reservation(out, overwrite) as r:
            r.write(fill)
    except KeyboardInterrupt:
        sys.exit(143)
    """
)


def start_crasher(out: Path, where: str, overwrite: bool) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(out), where, "1" if overwrite else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if where == "fill":
        assert p.stdout is not None and p.stdout.readline().strip() == "FILLING", p.stderr.read() if p.stderr else ""
    return p


@pytest.mark.parametrize("overwrite", [False, True])
def test_sigterm_during_the_save_leaves_no_litter_and_keeps_the_old_run(tmp_path, overwrite):
    out = tmp_path / "run"
    if overwrite:
        fake_run(out, "old")
    p = start_crasher(out, "fill", overwrite)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    assert sorted(x.name for x in tmp_path.iterdir()) == (["run"] if overwrite else [])
    if overwrite:
        assert tag_of(out) == "old"


@pytest.mark.parametrize("overwrite", [False, True])
def test_sigkill_during_the_save_is_cleaned_up_by_the_next_run(tmp_path, overwrite):
    out = tmp_path / "run"
    if overwrite:
        fake_run(out, "old")
    p = start_crasher(out, "fill", overwrite)
    p.kill()
    p.wait(timeout=30)
    left = sorted(x.name for x in tmp_path.iterdir())
    assert any(n.endswith(".tmp") for n in left) and ".run.lens-digits.lock" in left  # what a killed process leaves
    if overwrite:
        assert tag_of(out) == "old", "the old run survives a kill at any point before the swap"
    with Reservation(out, overwrite=True) as r:
        r.write(fill_with("rerun"))
    assert tag_of(out) == "rerun"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run"]


def test_sigkill_right_after_the_swap_leaves_the_new_run_in_place(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the atomic swap is Linux's renameat2")
    out = fake_run(tmp_path / "run", "old")
    p = start_crasher(out, "exchange", True)
    assert p.wait(timeout=30) == -signal.SIGKILL
    assert tag_of(out) == "new", "--out is never missing: the swap put the new run in place"
    with Reservation(out, overwrite=True):
        pass  # the next run removes the old run left in the temporary folder
    assert sorted(x.name for x in tmp_path.iterdir()) == ["run"]
