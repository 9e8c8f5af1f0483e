"""The residual cache: read back bit for bit, damaged shards recomputed, other settings refused, resumed after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import lens_digits as ld
from lens_digits.cli import main
from lens_digits.errors import LensDigitsError
from lens_digits.residuals.cache import ResidualCache
from lens_digits.storage import paths
from lens_digits.storage import reservation as rundir
from lens_digits.storage.paths import is_run_directory, pending_cache
from lens_digits.storage.reservation import Reservation

SWEEP = dict(scales=[2, 3], n_per_scale=12, methods=["logit_lens", "probe"], target="both", seed=3)


def sweep(model, cache, quiet=True, **changes):
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        return ld.run_sweep(model, cache=cache, **(SWEEP | changes))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def test_a_cached_sweep_reads_back_exactly_what_it_computed(builtin, tmp_path):
    cache = ResidualCache(tmp_path / "c", shard_size=16)
    first = sweep(builtin, cache, scales=[2])
    computed = cache.counts["computed"]
    assert cache.counts["read"] == 0 and computed == sum(first.record.n_problems.values())  # probes: train and val too
    again = ResidualCache(tmp_path / "c", shard_size=16)
    second = sweep(builtin, again, scales=[2])
    assert again.counts == {"read": computed, "computed": 0}  # the model ran on nothing
    assert second.table.equals(first.table) and second.emergence.equals(first.emergence)
    assert second.record.cache["problems"] == {"read": computed, "computed": 0}
    plain = sweep(builtin, None, scales=[2])  # without a cache: the same cells (batches differ, so compare to float rounding)
    assert (plain.table["accuracy"] - first.table["accuracy"]).abs().max() < 1e-9
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert all(paths.SHARD_FILE.fullmatch(n) for n in names) and len(names) == 2 * len(shards(tmp_path / "c"))


def test_damaged_and_truncated_shards_are_found_and_computed_again(builtin, tmp_path):
    folder = tmp_path / "c"
    first = sweep(builtin, ResidualCache(folder, shard_size=8), methods=["logit_lens"])
    files = shards(folder)
    assert len(files) >= 4
    truncated, flipped, unfinished = files[0], files[1], files[-1]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF
    flipped.write_bytes(data)
    unfinished_size = json.loads(unfinished.with_suffix(".json").read_text())["n"]
    unfinished.with_suffix(".json").unlink()  # a shard whose sidecar was never written
    cache = ResidualCache(folder, shard_size=8)
    with pytest.warns(UserWarning, match="fails its checksum"):
        second = sweep(builtin, cache, quiet=False, methods=["logit_lens"])
    sizes = [json.loads(f.with_suffix(".json").read_text())["n"] for f in (truncated, flipped)]
    assert cache.counts["computed"] == sum(sizes) + unfinished_size
    assert second.table.equals(first.table)
    again = ResidualCache(folder, shard_size=8)
    sweep(builtin, again, methods=["logit_lens"])
    assert again.counts["computed"] == 0  # all whole again


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        (dict(template="{a}+{b}= "), "task.template"),
        (dict(prepend_bos=False), "bos"),
        (dict(few_shot=1), "task.few_shot"),
    ],
)
def test_a_shard_made_with_other_settings_is_refused_naming_the_setting(builtin, tmp_path, change, setting):
    folder = tmp_path / "c"
    sweep(builtin, ResidualCache(folder, shard_size=64), target="first", methods=["logit_lens"])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(LensDigitsError, match=rf"other settings: {setting}"):
        sweep(builtin, ResidualCache(folder, shard_size=64), target="first", methods=["logit_lens"], **change)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing of it was touched
    # a run that replaces the old one discards its shards instead
    cache = ResidualCache(folder, shard_size=64, discard_other_settings=True)
    sweep(builtin, cache, target="first", methods=["logit_lens"], **change)
    assert cache.counts["read"] == 0
    reread = ResidualCache(folder, shard_size=64)
    sweep(builtin, reread, target="first", methods=["logit_lens"], **change)
    assert reread.counts["computed"] == 0


def test_another_model_or_shard_size_is_another_setting(builtin, llama_model, tmp_path):
    folder = tmp_path / "c"
    sweep(builtin, ResidualCache(folder, shard_size=64), target="first", methods=["logit_lens"], scales=[1, 2])
    with pytest.raises(LensDigitsError, match="other settings: (d_model|model|n_layers|weights)"):
        sweep(llama_model, ResidualCache(folder, shard_size=64), target="first", methods=["logit_lens"], scales=[1, 2])
    with pytest.raises(LensDigitsError, match="other settings: shard_size"):
        sweep(builtin, ResidualCache(folder, shard_size=32), target="first", methods=["logit_lens"], scales=[1, 2])
    with pytest.raises(LensDigitsError, match="shard size"):
        ResidualCache(folder, shard_size=0)


# ---- in a run directory --------------------------------------------------------------------------


def cli(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return main(list(args))


RUN = [
    "--model",
    "builtin:arith-llama",
    "--scales",
    "1-3",
    "--n",
    "24",
    "--methods",
    "logit_lens,probe",
    "--target",
    "both",
    "--seed",
    "3",
    "--no-progress",
]
LIGHT = ["--scales", "2-3", "--n", "12", "--target", "both", "--seed", "3", "--no-progress"]


def test_a_run_directory_keeps_its_cache_and_overwrite_reuses_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("run", *LIGHT, "--shard-size", "4", "--out", str(out)) == 0
    assert is_run_directory(out) and (out / "cache").is_dir() and not pending_cache(out).exists()
    info = json.loads((out / "run.json").read_text())
    total = info["cache"]["problems"]["computed"]
    assert info["cache"]["folder"] == "cache" and info["cache"]["problems"]["read"] == 0 and total > 0
    grid = (out / "grid.csv").read_bytes()
    assert cli("run", *LIGHT, "--shard-size", "4", "--out", str(out), "--overwrite") == 0
    info = json.loads((out / "run.json").read_text())
    assert info["cache"]["problems"] == {"read": total, "computed": 0}
    assert (out / "grid.csv").read_bytes() == grid
    assert len(shards(out / "cache")) == len(list((out / "cache").glob("*.json")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no litter beside it
    # another setting with --overwrite: the old shards are dropped, not mixed in
    assert cli("run", *LIGHT, "--shard-size", "4", "--out", str(out), "--overwrite", "--template", "{a}+{b}= ") == 0
    keys = {json.dumps(json.loads(p.read_text())["key"]["task"], sort_keys=True) for p in (out / "cache").glob("*.json")}
    assert len(keys) == 1 and "{a}+{b}= " in keys.pop()
    # --no-cache: nothing on disk besides the run files
    assert cli("run", *LIGHT, "--out", str(tmp_path / "bare"), "--no-cache") == 0
    assert not (tmp_path / "bare" / "cache").exists() and not pending_cache(tmp_path / "bare").exists()


def test_a_foreign_file_in_the_cache_folder_makes_it_not_ours(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": paths.RUN_FORMAT}))
    (out / "cache").mkdir()
    (out / "cache" / "seed0-first-test-scale1-0000.json").write_text("{}")
    assert is_run_directory(out)
    (out / "cache" / "thesis.tex").write_text("mine")
    assert not is_run_directory(out)
    with pytest.raises(LensDigitsError, match="not written by lens-digits|not a lens-digits run|refus"):
        Reservation(out, overwrite=True).acquire()


def test_a_cache_moved_into_a_run_that_died_before_its_swap_is_kept_for_the_next_run(tmp_path):
    target = tmp_path / "run"
    dead = tmp_path / f".run.{rundir.TAG}-999999-abcdef.tmp"
    (dead / "cache").mkdir(parents=True)
    (dead / rundir.PARTIAL_MARKER).write_text("999999\n")
    (dead / "cache" / "seed0-first-test-scale1-0000.json").write_text("{}")
    with Reservation(target):
        pass
    assert not dead.exists()
    assert (pending_cache(target) / "seed0-first-test-scale1-0000.json").is_file()


# ---- resumed after SIGKILL -----------------------------------------------------------------------

CHILD = "import sys, warnings; warnings.simplefilter('ignore'); from lens_digits.cli import main; sys.exit(main(sys.argv[1:]))"


def start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", CHILD, "run", *RUN, "--shard-size", "8", "--out", str(out), *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_a_run_killed_at_any_point_resumes_to_a_byte_identical_grid(tmp_path):
    reference = tmp_path / "reference"
    assert start(reference).wait(timeout=300) == 0
    n_shards = len(shards(reference / "cache"))
    assert n_shards >= 20
    for kill_after in (1, n_shards // 2, n_shards - 1):
        out = tmp_path / f"killed-{kill_after}"
        p = start(out)
        pending = pending_cache(out)
        # a shard is complete once its sidecar is written (after its tensors): wait for complete ones
        while len(list(pending.glob("*.json")) if pending.is_dir() else []) < kill_after and p.poll() is None:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert not out.exists()  # nothing half-written where the run directory goes
        whole = sum(json.loads(m.read_text())["n"] for m in pending.glob("*.json"))  # shards with their sidecar: complete
        assert whole > 0
        assert start(out).wait(timeout=300) == 0
        info = json.loads((out / "run.json").read_text())
        total = json.loads((reference / "run.json").read_text())["cache"]["problems"]["computed"]
        assert info["cache"]["problems"] == {"read": whole, "computed": total - whole}  # only what was missing
        for name in ("grid.csv", "emergence.csv", "prompts.jsonl"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (kill_after, name)
        assert not pending.exists()


def test_collected_residuals_are_memory_mapped_and_leave_no_file_behind(builtin, tmp_path):
    from lens_digits.model.adapter import ModelAdapter
    from lens_digits.problems.targets import encode_for_model
    from lens_digits.problems.tasks import TaskConfig, generate_problems
    from lens_digits.residuals.cache import sweep_key
    from lens_digits.residuals.collect import collect_residuals

    adapter = ModelAdapter.wrap(builtin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        problems = [p for p in generate_problems(TaskConfig(scales=[2, 3], n_per_scale=10, n_train=12, n_val=4)) if p.split != "val"]
    problems = [p for p in problems if p.split == "test"] + [p for p in problems if p.split == "train"]
    encoded = encode_for_model(adapter, problems)
    cache = ResidualCache(tmp_path / "c", shard_size=8)
    key = {**sweep_key(adapter, False, None, 8), "task": {}}
    data = cache.collect(adapter, key, problems, encoded, kind="answer", seed=0, teacher_forcing=True)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if ".assembled-" in line]
    assert mapped and all(line.endswith("(deleted)") for line in mapped)  # file-backed pages, the file already gone
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]
    plain = collect_residuals(adapter, problems, encoded=encoded, teacher_forcing=True)
    assert torch.allclose(data.resid, plain.resid, atol=1e-5) and torch.equal(data.target_ids, plain.target_ids)
    test = data.split("test")  # one run of rows: a view of the mapping, not a copy
    assert test.resid.untyped_storage().data_ptr() == data.resid.untyped_storage().data_ptr()
    assert torch.allclose(test.resid, plain.split("test").resid, atol=1e-5)
    back = ResidualCache(tmp_path / "c", shard_size=8).load(problems, kind="answer", seed=0, task={})
    assert torch.equal(back.resid, data.resid) and torch.equal(back.target_ids, data.target_ids)


def test_temporary_files_of_dead_writers_are_cleared_and_those_of_live_ones_kept(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    left = [folder / f".seed0-first-test-scale1-0000.safetensors.{dead}.part", folder / f".assembled-{dead}-0a1b2c3d.part"]
    live = folder / f".seed0-first-test-scale1-0001.json.{os.getppid()}.part"  # another process, still running
    for p in [*left, live]:
        p.write_text("x")
    ResidualCache(folder).clear_partial()
    assert [p.exists() for p in left] == [False, False] and live.exists()
