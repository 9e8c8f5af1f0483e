"""ModelAdapter: the model wrapped once, with the facts the package asks of it."""

import pytest
import torch

import lens_digits as ld
from lens_digits.model.adapter import ModelAdapter
from lens_digits.model.loading import model_kind
from lens_digits.testing import tiny_model


def test_load_local_folder_in_eval_mode(llama_dir):
    model = ld.load_model(llama_dir, device="cpu", dtype="float32")
    assert model_kind(model) == "TransformerBridge" and not model.training
    info = ModelAdapter.wrap(model).describe()
    assert info["n_layers"] == 3 and info["d_model"] == 32 and info["dtype"] == "float32"


def test_model_without_tokenizer_is_a_clear_error():
    model = ld.build_model(d_vocab=20)
    with pytest.raises(ld.LensDigitsError, match="no tokenizer"):
        ld.run_sweep(model, scales=[1], n_per_scale=5)


@pytest.mark.parametrize("which", ["native_model", "llama_model"])
def test_wrap_takes_the_sizes_from_the_models_config(which, request):
    model = request.getfixturevalue(which)
    adapter = ModelAdapter.wrap(model)
    assert (adapter.n_layers, adapter.d_model, adapter.d_vocab) == (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab)
    assert adapter.model is model and adapter.kind == model_kind(model)
    assert ModelAdapter.wrap(adapter) is adapter


@pytest.mark.parametrize("which", ["native_model", "llama_model"])
def test_resid_hook_names_are_each_blocks_input_then_the_last_output(which, request):
    model = request.getfixturevalue(which)
    n = model.cfg.n_layers
    names = ModelAdapter.wrap(model).resid_hook_names
    assert len(names) == n + 1 and names[-1] == f"blocks.{n - 1}.hook_resid_post"
    assert names[:-1] == [f"blocks.{i}.hook_resid_pre" for i in range(n)]
    _, cache = model.run_with_cache(torch.tensor([[1, 5, 6, 67, 7, 70]]))
    assert all(name in cache for name in names)


def test_bos_id_follows_the_tokenizer_unless_turned_off():
    model = tiny_model()
    adapter = ModelAdapter.wrap(model)
    assert adapter.bos_id(False) is None
    assert adapter.bos_id(None) == model.tokenizer.bos_token_id == adapter.bos_id(True)
    assert adapter.bos_id(None) is not None


def test_wrap_refuses_what_is_not_a_transformer_lens_model():
    with pytest.raises(ld.LensDigitsError, match="expected a TransformerLens"):
        ModelAdapter.wrap(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("which", ["native_model", "llama_model", "gpt2_model"])
def test_last_logits_are_the_models_own_at_the_last_position(which, request):
    import torch

    from lens_digits.model.adapter import ModelAdapter

    model = request.getfixturevalue(which)
    adapter = ModelAdapter.wrap(model)
    tokens = torch.randint(0, adapter.d_vocab, (5, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(tokens, return_type="logits")[:, -1]
        got = adapter.last_logits(tokens)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-4, atol=1e-4)
