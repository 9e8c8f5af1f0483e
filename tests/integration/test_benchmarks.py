"""The benchmark scripts run (on a tiny model, on the CPU), and their contenders agree on every top-1."""

import subprocess
import sys

import pytest
from conftest import REPO

BENCH = REPO / "benchmarks"


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["first", "answer"])
def test_sweep_floor_contenders_give_the_same_top1(target):
    proc = run(BENCH / "sweep_floor.py", "--tiny", "--vocab", "3000", "--target", target, "--n", "10", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the same top-1 everywhere" in proc.stdout and "| sweep |" in proc.stdout and "| naive |" in proc.stdout


def test_reduction_benchmark_contenders_agree_in_float32_and_bfloat16():
    proc = run(BENCH / "reduction.py", "--device", "cpu", "--rows", "16", "--d", "32", "--vocab", "5000", "--calls", "1", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| float32 |" in proc.stdout and "| bfloat16 |" in proc.stdout


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_with_a_small_shape():
    proc = run(
        BENCH / "gpu.py", "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--vocab", "1000", "--n", "5", "--repeats", "1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| floor |" in proc.stdout and "| sweep (logit lens) |" in proc.stdout and "scored problems/s" in proc.stdout
    assert "top-1 of the sweep equal to the floor's at 100.0000%" in proc.stdout


@pytest.mark.slow
def test_greedy_benchmark_agrees_with_generate():
    proc = run(BENCH / "greedy.py", "--tiny", "--vocab", "1000", "--n", "5", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| generate |" in proc.stdout and "| package |" in proc.stdout and "| recompute |" in proc.stdout
    assert "key-value cache was used" in proc.stdout


@pytest.mark.slow
def test_tuned_lens_trained_per_layer_matches_the_batched_training():
    proc = run(BENCH / "readings.py", "--part", "tuned", "--model", "builtin", "--steps", "5", "--n", "10", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| batched |" in proc.stdout and "| per_layer |" in proc.stdout and "largest difference" in proc.stdout


@pytest.mark.slow
def test_readings_benchmark_runs_every_reading():
    proc = run(BENCH / "readings.py", "--part", "sweep", "--model", "builtin", "--n", "10", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| every reading |" in proc.stdout and "circular_probe" in proc.stdout


@pytest.mark.slow
def test_patching_benchmark_runs():
    proc = run(BENCH / "readings.py", "--part", "patch", "--model", "builtin", "--n", "10", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| patch, target first |" in proc.stdout and "pairs" in proc.stdout


@pytest.mark.slow
def test_cache_benchmark_runs_and_its_contenders_agree():
    proc = run(BENCH / "cache.py", "--model", "builtin", "--n", "10", "--repeats", "1", "--target", "first")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| cache, cold |" in proc.stdout and "| cache, warm |" in proc.stdout and "MiB" in proc.stdout


@pytest.mark.slow
def test_attribution_benchmark_counts_passes_against_patch():
    pytest.importorskip("transformer_lens.tools.analysis", reason="attribution patching wraps tools.analysis (TransformerLens >= 3.9)")
    proc = run(BENCH / "attribution.py", "--model", "arith-llama", "--n", "4", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| patch | 5.0 | 0 |" in proc.stdout and "| attribution | 1.0 | 1 |" in proc.stdout  # 5 columns: one forward each
    assert "| attribution+exact | 7.0 | 1 |" in proc.stdout


@pytest.mark.slow
def test_probe_sweep_benchmark_times_the_batched_fit_against_per_layer_loops():
    proc = run(BENCH / "probe_sweeps.py", "--size", "tiny", "--model", "arith-llama", "--sk-layers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"batched", "per-layer (ours)", "per-layer (scikit-learn)"} <= set(rows)
    assert rows["per-layer (ours)"][2].strip() == "100.00%"  # the same solver, one (scale, layer) at a time
    assert float(rows["per-layer (scikit-learn)"][2].strip().rstrip("%")) >= 90  # another solver of the same objective
