"""Filesystem faults: a full disk, a file-size limit, read-only or vanished folders, symbolic links, two refits at once.

Each ends in exit 0 with a correct grid, or exit 2 with one line naming the path and what to do, with no temporary
files, locks or half-written folders left (residuals already computed are kept for a resume, and the message says
where). Real faults where the machine allows them: a small tmpfs and read-only bind mounts need root (skipped with a
message elsewhere), a file-size limit works anywhere.
"""

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lens_digits.cli import main

RUN = [
    "run",
    "--model",
    "builtin:arith-llama",
    "--scales",
    "1-2",
    "--n",
    "12",
    "--methods",
    "logit_lens,probe",
    "--target",
    "first",
    "--no-progress",
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli_process(*args: str, limit: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``lens-digits ARGS`` in a child process (a SIGBUS there cannot take the test with it), optionally under ``ulimit -f``."""

    def preexec() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = "import sys; from lens_digits.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=timeout, preexec_fn=preexec)


def one_error_line(err: str) -> str:
    """The one error line of a command's stderr (warnings may come before it)."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("lens-digits: warning: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("lens-digits: error: "), err
    return lines[0]


def _mount(*args: str) -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small filesystem of its own at ``path`` (root only: skipped with a message elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("a full disk needs a small tmpfs, which only root can mount here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` read-only: a read-only bind mount for root (who ignores permissions), chmod for anyone else."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if not (_mount("--bind", str(path), str(path)) and _mount("-o", "remount,ro,bind", str(path))):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        pytest.skip("read-only folders for root need a read-only bind mount, which this machine refuses")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path, leave: int = 64 * 1024) -> Path:
    """Fill the filesystem of ``folder`` until ``leave`` bytes are free, with a ballast file (returned)."""
    ballast = folder / "ballast"
    free = shutil.disk_usage(folder).free
    with open(ballast, "wb") as f:
        f.truncate(0)
        chunk = bytes(1 << 20)
        left = max(0, free - leave)
        while left > 0:
            left -= f.write(chunk[: min(len(chunk), left)])
    return ballast


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished run directory of the built-in model, with probes, for fit and plot."""
    out = tmp_path_factory.mktemp("made") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


# ---- a full disk ----------------------------------------------------------------------------------


def test_a_full_disk_while_the_cache_grows_is_one_line_not_sigbus(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as disk:
        done = cli_process("run", "--scales", "1-4", "--n", "200", "--no-progress", "--out", str(disk / "run"))
        assert done.returncode == 2, done.stderr  # not -7 (SIGBUS)
        line = one_error_line(done.stderr)
        assert "assembling the residuals needs" in line and "MiB" in line and str(disk) in line and "--no-cache" in line
        assert names(disk) == []  # no cache, no lock, no temporary folder


def test_a_full_disk_at_the_final_save_keeps_the_earlier_run_and_leaves_no_temporary_files(tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        out = disk / "run"
        done = cli_process(*RUN, "--out", str(out))
        assert done.returncode == 0, done.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        ballast = fill_disk(disk)
        done = cli_process(*RUN, "--seed", "3", "--overwrite", "--no-cache", "--out", str(out))  # fails at the final save
        assert done.returncode == 2, done.stderr
        line = one_error_line(done.stderr)
        assert "no space left on the device" in line and str(out) in line
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the earlier run, intact
        left = [n for n in names(disk) if n not in ("run", "ballast")]
        assert all(n == ".run.lens-digits.cache" for n in left), left  # no temporary folder, no lock
        if left:  # residuals computed before the disk filled are kept for a resume, and the message says where
            assert ".run.lens-digits.cache" in line and "resumes" in line
        ballast.unlink()
        done = cli_process(*RUN, "--seed", "3", "--overwrite", "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert names(disk) == ["run"]


def test_plot_study_and_train_model_on_a_full_disk_are_one_line(tmp_path, made):
    with tmpfs(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        shutil.copytree(made, run, ignore=shutil.ignore_patterns("cache"))
        ballast = fill_disk(disk)
        done = cli_process("plot", str(run), "--method", "probe")
        assert done.returncode == 2, done.stderr
        assert "no space left" in one_error_line(done.stderr)
        assert not [n for n in names(run) if n.endswith(".part") or n.startswith("heatmap-")]
        study = tmp_path / "study.toml"
        study.write_text('methods = ["logit_lens"]\nn = 10\nscales = "1"\n[[models]]\nname = "b"\nmodel = "builtin:arith-llama"\n')
        done = cli_process("study", str(study), "--out", str(disk / "study"), "--no-progress")
        assert done.returncode == 2, done.stderr
        assert "no space left" in one_error_line(done.stderr)
        done = cli_process("train-model", "--out", str(disk / "model"), "--steps", "2", "--eval-n", "0", "--no-progress")
        assert done.returncode == 2, done.stderr
        assert "no space left" in one_error_line(done.stderr)
        assert not [n for n in names(disk) if n.startswith(".")]  # no temporary folders or locks
        ballast.unlink()


def test_a_file_size_limit_is_one_line(tmp_path):
    out = tmp_path / "run"
    done = cli_process(*RUN, "--out", str(out), limit=256 * 1024)  # heatmap.html alone is larger
    assert done.returncode == 2, done.stderr  # not killed by SIGXFSZ
    line = one_error_line(done.stderr)
    assert "ulimit -f" in line and str(out) in line
    assert [n for n in names(tmp_path) if n != ".run.lens-digits.cache"] == []


# ---- read-only and vanished folders --------------------------------------------------------------


def test_fit_and_plot_in_a_read_only_run_directory_are_one_line_before_any_work(tmp_path, made, capsys):
    run = tmp_path / "run"
    shutil.copytree(made, run)
    before = (run / "grid.csv").read_bytes()
    with read_only(run):
        assert main(["fit", str(run), "--methods", "circular_probe", "--no-progress"]) == 2
        assert "read-only" in one_error_line(capsys.readouterr().err)
        assert main(["plot", str(run), "--method", "probe"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "read-only" in line or "permission denied" in line
    assert (run / "grid.csv").read_bytes() == before
    assert names(tmp_path) == ["run"]


def _during_the_sweep(monkeypatch, action):
    """Run ``action`` right after the sweep computed, before the run directory is written."""
    import lens_digits.cli.run as cli_module

    sweep = cli_module._sweep

    def wrapped(*args, **kwargs):
        grid = sweep(*args, **kwargs)
        action()
        return grid

    monkeypatch.setattr(cli_module, "_sweep", wrapped)


def test_a_parent_folder_made_read_only_mid_run_is_one_line_and_the_next_run_clears_up(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "runs"
    parent.mkdir()
    stack = contextlib.ExitStack()
    _during_the_sweep(monkeypatch, lambda: stack.enter_context(read_only(parent)))
    with stack:
        assert main([*RUN, "--no-cache", "--out", str(parent / "demo")]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "read-only" in line or "permission denied" in line
        assert "the next run into the same folder removes them" in line or names(parent) == []
    monkeypatch.undo()
    assert main([*RUN, "--no-cache", "--out", str(parent / "demo")]) == 0
    assert names(parent) == ["demo"]  # what the failed run could not remove is gone


def test_a_parent_folder_removed_mid_run_is_one_line(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "runs"
    parent.mkdir()
    _during_the_sweep(monkeypatch, lambda: shutil.rmtree(parent))
    assert main([*RUN, "--out", str(parent / "demo")]) == 2
    assert "removed while the command ran" in one_error_line(capsys.readouterr().err)
    assert not parent.exists()


# ---- symbolic links ---------------------------------------------------------------------------------


def test_a_symlink_at_the_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (tmp_path / ".run.lens-digits.lock").symlink_to(precious)
    assert main([*RUN, "--out", str(tmp_path / "run")]) == 2
    assert "is a symbolic link" in one_error_line(capsys.readouterr().err)
    assert precious.read_text() == "mine"
    assert not (tmp_path / "run").exists()


def test_a_symlinked_pending_cache_is_refused_and_nothing_written_through_it(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".run.lens-digits.cache").symlink_to(elsewhere)
    assert main([*RUN, "--out", str(tmp_path / "run")]) == 2
    assert "is a symbolic link" in one_error_line(capsys.readouterr().err)
    assert names(elsewhere) == []
    assert names(tmp_path) == [".run.lens-digits.cache", "elsewhere"]


def test_a_symlink_where_a_temporary_file_goes_is_refused(tmp_path):
    from lens_digits.errors import OutputError
    from lens_digits.storage import atomic

    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (tmp_path / f".grid.csv.{os.getpid()}.part").symlink_to(precious)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic.write_file(tmp_path / "grid.csv", b"data")
    assert precious.read_text() == "mine" and not (tmp_path / "grid.csv").exists()


# ---- refits -----------------------------------------------------------------------------------------


def test_a_second_fit_of_the_same_run_exits_at_once_and_no_rows_are_lost(tmp_path, made):
    run = tmp_path / "run"
    shutil.copytree(made, run)
    code = "import sys; from lens_digits.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "fit", str(run), "--methods", m, "--no-progress"], env=ENV, stderr=subprocess.PIPE, text=True
        )
        for m in ("circular_probe", "probe")
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert all(code in (0, 2) for code, _ in results), results
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code == 2:
            assert "another lens-digits run (pid" in one_error_line(err)
    import pandas as pd

    methods = set(pd.read_csv(run / "grid.csv")["method"])
    for (code, _), m in zip(results, ("circular_probe", "probe"), strict=True):
        if code == 0:
            assert m in methods  # a fit that said it wrote its rows did
    assert {"logit_lens", "probe"} <= methods
    assert names(tmp_path) == ["run"]
