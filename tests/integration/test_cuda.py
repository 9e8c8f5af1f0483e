"""On a CUDA GPU: every reading runs with the model and its residuals on the device and gives the CPU's grid.

Skipped on a machine without one (the module's only requirement); ``compare_devices`` is
what the tests run, and runs on any pair of devices.
"""

import pytest
import torch
from conftest import GPU_CPU_SPLIT

import lens_digits as ld

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = ["logit_lens", "tuned_lens", "probe", "circular_probe", "patch"]


def compare_devices(folder, device, reference="cpu", **kw):
    """The grid of a sweep on ``device`` against the same sweep on ``reference``.

    Logit-lens and patching cells may differ by one problem (a near tie rounded the
    other way by another matrix-product kernel); fitted readings by at most 0.2 in a
    cell and 0.05 on average (their solvers run in another precision on a GPU).
    """
    settings = dict(scales="1-3", n_per_scale=30, target="all", seed=0, methods=METHODS) | kw
    grids = [ld.run_sweep(ld.load_model(folder, device=d), **settings).to_dataframe(breakdown=False) for d in (device, reference)]
    keys = ["method", "target", "scale", "layer"]
    a, b = (g.sort_values(keys).reset_index(drop=True) for g in grids)
    assert a[keys].equals(b[keys]) and a["n"].equals(b["n"]), "the same cells, scored on the same problems"
    assert set(a["method"]) == set(settings["methods"])
    exact = a["method"].isin(["logit_lens", "patch"])
    gap = (a["accuracy"] - b["accuracy"]).abs()
    assert (gap[exact] <= 1 / a["n"][exact] + 1e-9).all()
    fitted = a[~exact].assign(gap=gap[~exact])
    assert (fitted["gap"] <= 0.2).all() and (fitted.groupby("method")["gap"].mean() <= 0.05).all()


def test_every_reading_runs_on_the_gpu_and_gives_the_cpus_grid(llama_dir):
    compare_devices(llama_dir, "cuda")


def test_greedy_answers_of_a_model_split_between_gpu_and_cpu(llama_dir):
    kw = dict(scales="1-3", n_per_scale=30, target="model", seed=0, device="cpu")
    a = ld.run_sweep(ld.load_model(llama_dir, device_map=GPU_CPU_SPLIT), **kw).to_dataframe()
    b = ld.run_sweep(ld.load_model(llama_dir, device="cpu"), **kw).to_dataframe()
    cells = ["method", "target", "scale", "layer", "accuracy", "n"]
    assert a[cells].equals(b[cells])
