"""Executors: one run's residual shards computed as Ray tasks give the same bytes as a local run; errors say what to do."""

import json
import os
import shutil
import stat
import sys
import warnings

import pytest

from lens_digits.cli import main
from lens_digits.errors import LensDigitsError
from lens_digits.runs.executors import executor_named, run_ray
from lens_digits.runs.study import run_unit

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
    "both",
    "--seed",
    "2",
    "--no-progress",
]


def cli(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return main(list(args))


@pytest.mark.slow
def test_a_run_whose_shards_are_computed_by_ray_tasks_equals_a_local_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from lens_digits.runs.executors import local_ray_settings

    settings = local_ray_settings()  # before Ray is imported
    ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    assert cli(*RUN, "--shard-size", "8", "--out", str(tmp_path / "local")) == 0
    ray.init(num_cpus=2, **settings)
    try:
        assert cli(*RUN, "--shard-size", "8", "--out", str(tmp_path / "ray"), "--executor", "ray") == 0
    finally:
        ray.shutdown()
        shutil.rmtree(settings["_temp_dir"], ignore_errors=True)
    for name in ("grid.csv", "emergence.csv", "prompts.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    cache = json.loads((tmp_path / "ray" / "run.json").read_text())["cache"]
    local = json.loads((tmp_path / "local" / "run.json").read_text())["cache"]
    assert cache["executor"] == "ray" and cache["problems"] == {"read": local["problems"]["computed"], "computed": 0}
    assert not (tmp_path / "home").exists()


def test_executor_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(LensDigitsError, match="unknown executor 'slurm'"):
        executor_named("slurm", run_unit)
    with pytest.raises(LensDigitsError, match="--address is for --executor ray"):
        executor_named("local", run_unit, address="127.0.0.1:6379")
    assert cli(*RUN, "--out", str(tmp_path / "a"), "--executor", "ray", "--no-cache") == 2
    assert cli(*RUN, "--out", str(tmp_path / "b"), "--address", "127.0.0.1:6379") == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(LensDigitsError, match=r"needs Ray, an optional extra: pip install 'lens-digits\[ray\]'"):
        run_ray([])


@pytest.mark.slow
def test_a_cluster_started_for_a_run_keeps_its_session_files_private_and_removes_them(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    import lens_digits.runs.executors as executors

    seen = []
    made = executors.local_ray_settings

    def settings():
        out = made()
        seen.append((out["_temp_dir"], stat.S_IMODE(os.stat(out["_temp_dir"]).st_mode)))
        return out

    monkeypatch.setattr(executors, "local_ray_settings", settings)
    assert cli(*RUN, "--shard-size", "8", "--out", str(tmp_path / "ray"), "--executor", "ray") == 0
    assert len(seen) == 1
    folder, mode = seen[0]
    assert mode == 0o700  # no other user reads the session's sockets and logs
    assert not os.path.exists(folder)  # and nothing of it is left after the run


@pytest.mark.slow
def test_a_cluster_started_for_a_run_keeps_token_auth_and_prints_no_notice(tmp_path):
    """Ray announces token auth on every ``ray.init`` unless the mode is set: the package sets it (on), so runs stay quiet."""
    import subprocess

    pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "lens_digits.cli", *RUN, "--out", str(tmp_path / "ray"), "--executor", "ray"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Token authentication" not in done.stderr + done.stdout
    assert not (tmp_path / "home").exists()  # and no token was written into a home folder
