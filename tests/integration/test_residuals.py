"""Residual collection: the hook, batching by the length actually fed, what is stored, and models split over devices."""

import pytest
import torch
from conftest import GPU_CPU_SPLIT, problems_for

import lens_digits as ld
from lens_digits.methods import LogitLens
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import _keep, collect_residuals


class OnlyItsOwnDevice(torch.Tensor):
    """An activation that, like a CUDA tensor on another GPU, refuses an index from a different device.

    (On the CPU every device is the same one; this makes the check a GPU would make.)
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.gather:
            x, _, index = args[:3]
            if index.device != x.device:
                raise RuntimeError(f"gather: index on {index.device}, activation on {x.device}")
        return super().__torch_function__(func, types, args, kwargs)


def test_hook_gathers_on_the_activations_device():
    x = torch.randn(2, 5, 4, device="meta").as_subclass(OnlyItsOwnDevice)
    out = torch.zeros(3, 2, 2, 4, device="meta")
    gather = torch.tensor([[1, 2], [3, 4]])  # built on the first parameter's device (here: cpu)
    finite = torch.ones(2, 2, dtype=torch.bool, device="meta")
    _keep(x, None, out=out, rows=torch.tensor([0, 2]), layer=1, gather=gather, valid=torch.ones(2, 2, dtype=torch.bool), finite=finite)
    with pytest.raises(RuntimeError, match="index on cpu, activation on meta"):  # what the hook used to do
        x.gather(1, gather[:, :, None].expand(-1, -1, 4))


def test_hook_copies_exactly_the_kept_positions():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    out = torch.full((4, 2, 2, 3), -1.0)
    valid = torch.tensor([[True, True], [True, False]])
    finite = torch.zeros(2, 2, dtype=torch.bool)
    _keep(x, None, out=out, rows=torch.tensor([3, 1]), layer=0, gather=torch.tensor([[1, 2], [4, 4]]), valid=valid, finite=finite)
    assert torch.equal(out[3, 0], x[0, [1, 2]])
    assert torch.equal(out[1, 0, 0], x[1, 4]) and torch.equal(out[1, 0, 1], torch.zeros(3))
    assert (out[[0, 2]] == -1).all() and (out[:, 1] == -1).all()
    assert finite[:, 0].all() and not finite[:, 1].any()  # layer 0 is finite for both problems; layer 1 was not collected
    x[1, 4, 0] = float("nan")  # a NaN at a kept position is noted for its problem and layer, never copied as a number
    _keep(x, None, out=out, rows=torch.tensor([3, 1]), layer=1, gather=torch.tensor([[1, 2], [4, 4]]), valid=valid, finite=finite)
    assert finite[:, 1].tolist() == [True, False]


def test_batched_equals_unbatched(llama_model):
    problems = problems_for(scales=(1, 2, 3), n=15, few_shot=2)
    one = collect_residuals(llama_model, problems, batch_size=1)
    many = collect_residuals(llama_model, problems, batch_size=64)
    torch.testing.assert_close(one.resid, many.resid, rtol=1e-5, atol=1e-5)
    lens = LogitLens.from_model(llama_model)
    assert torch.equal(lens.decode(one)[0], lens.decode(many)[0])


def test_stored_residuals_have_only_answer_positions(llama_model):
    problems = problems_for(scales=(1, 3), n=10, few_shot=3)
    rs = collect_residuals(llama_model, problems)
    n_answer = [len(e.answer_ids) for e in rs.encoded]
    assert rs.resid.shape == (len(problems), llama_model.cfg.n_layers + 1, max(n_answer), llama_model.cfg.d_model)
    assert rs.resid.dtype == torch.float32
    assert (rs.answer_mask.sum(1) == torch.tensor(n_answer)).all()
    assert (rs.resid[~rs.answer_mask.unsqueeze(1).expand(-1, rs.n_columns, -1)] == 0).all()
    first_only = collect_residuals(llama_model, problems, teacher_forcing=False)
    assert first_only.resid.shape[2] == 1
    torch.testing.assert_close(first_only.resid[:, :, 0], rs.resid[:, :, 0], rtol=1e-5, atol=1e-5)


def test_target_first_on_bpe_batches_by_the_prompt_length(gpt2_model):
    """Prompt+answer lengths and prompt lengths group problems differently on BPE: this used to crash."""
    problems = generate_problems(TaskConfig(scales=[1, 2, 3, 4], n_per_scale=30, template="{a} {op} {b} =", answer_prefix=" "))
    rs = collect_residuals(gpt2_model, problems, teacher_forcing=False, batch_size=64)
    one = collect_residuals(gpt2_model, problems, teacher_forcing=False, batch_size=1)
    torch.testing.assert_close(rs.resid, one.resid, rtol=1e-5, atol=1e-5)
    grid = ld.run_sweep(gpt2_model, scales="1-4", n_per_scale=30, target="first", template="{a} {op} {b} =", answer_prefix=" ")
    assert set(grid.to_dataframe()["scale"]) == {1, 2, 3, 4}
    probe_only = ld.run_sweep(gpt2_model, scales="1-2", n_per_scale=60, methods=["probe"], target="answer", template="{a} {op} {b} =")
    assert "probe" in probe_only.methods


def test_out_of_memory_names_the_flag_to_change(native_model, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(native_model, "run_with_hooks", oom)
    with pytest.raises(ld.LensDigitsError, match=r"out of memory .*--batch-size 16"):
        ld.run_sweep(native_model, scales=[2], n_per_scale=60, batch_size=32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to split a model between GPU and CPU")
def test_a_model_split_between_gpu_and_cpu_gives_the_unsplit_grid(llama_dir):
    split = ld.load_model(llama_dir, device_map=GPU_CPU_SPLIT)
    whole = ld.load_model(llama_dir, device="cpu")
    kw = dict(scales="1-3", n_per_scale=30, target="both", seed=0)
    a = ld.run_sweep(split, device="cpu", **kw).to_dataframe()
    b = ld.run_sweep(whole, **kw).to_dataframe()
    exact = ["method", "target", "scale", "layer", "accuracy", "n"]
    assert a[exact].equals(b[exact])


def test_stopping_at_the_final_residual_leaves_the_model_as_it_was(llama_model):
    tokens = torch.tensor([[1, 5, 6, 67, 7, 70]])
    with torch.inference_mode():
        before = llama_model(tokens)
    problems = generate_problems(TaskConfig(scales=[1, 2], n_per_scale=10, n_train=0, n_val=0))
    rs = collect_residuals(llama_model, problems, batch_size=4)
    with torch.inference_mode():
        after = llama_model(tokens)
    torch.testing.assert_close(after, before)  # no hook left behind
    # and the final column is still the residual the model's own readout turns into its prediction
    from lens_digits.methods import LogitLens

    top1, _, _ = LogitLens.from_model(llama_model).decode(rs)
    with torch.inference_mode():
        for i, e in enumerate(rs.encoded):
            logits = llama_model(torch.tensor([list(e.prompt_ids) + list(e.answer_ids)]))[0]
            own = logits[len(e.prompt_ids) - 1 : len(e.prompt_ids) - 1 + len(e.answer_ids)].argmax(-1)
            assert torch.equal(top1[i, -1, : len(e.answer_ids)], own)
