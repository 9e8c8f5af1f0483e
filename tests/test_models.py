import pytest
import torch
from conftest import HAS_HOOKED

import lens_digits as ld
from lens_digits.adapter import ModelAdapter
from lens_digits.models import hooked_transformer_class, model_kind, transformer_lens_version


def test_feature_detection_matches_installed_version():
    major = int(transformer_lens_version().split(".")[0])
    assert (hooked_transformer_class() is not None) == (major < 4) == HAS_HOOKED


def test_load_local_folder_in_eval_mode(llama_dir):
    model = ld.load_model(llama_dir, device="cpu", dtype="float32")
    assert model_kind(model) == "TransformerBridge" and not model.training
    info = ModelAdapter.wrap(model).describe()
    assert info["n_layers"] == 3 and info["d_model"] == 32 and info["dtype"] == "float32"


def test_load_in_bfloat16_keeps_float32_residuals(llama_dir):
    model = ld.load_model(llama_dir, device="cpu", dtype="bfloat16")
    rs = ld.collect_residuals(model, ld.generate_problems(ld.TaskConfig(scales=[1], n_per_scale=5)))
    assert rs.resid.dtype == torch.float32 and rs.info["model_dtype"] == "bfloat16"


@pytest.mark.parametrize("name,message", [("./missing/dir", "no checkpoint folder"), ("/nope/x", "no checkpoint folder")])
def test_missing_checkpoint_errors(name, message):
    with pytest.raises(ld.ModelLoadError, match=message):
        ld.load_model(name)


def test_unreachable_hub_fails_fast_with_offline_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ld.ModelLoadError, match="local checkpoint folder, or use the built-in model"):
        ld.load_model("someone/not-a-cached-model")


def test_bad_dtype_and_kind():
    with pytest.raises(ld.LensDigitsError, match="unknown dtype"):
        ld.load_model("x/y", dtype="float8")
    with pytest.raises(ld.LensDigitsError, match="expected a TransformerLens"):
        ld.run_sweep(torch.nn.Linear(2, 2), scales=[1], n_per_scale=5)


def test_hooked_transformer_accepted_where_installed(hooked_model):
    assert model_kind(hooked_model) == "HookedTransformer"
    grid = ld.run_sweep(hooked_model, scales=[1, 2], n_per_scale=20, target="both")
    assert len(grid.to_dataframe()) == 2 * 2 * (hooked_model.cfg.n_layers + 1)


def test_hooked_kind_built_where_available_else_refused():
    if HAS_HOOKED:
        assert model_kind(ld.build_model(tokenizer=ld.testing.char_tokenizer(), kind="hooked")) == "HookedTransformer"
    else:
        with pytest.raises(ld.LensDigitsError, match="has no HookedTransformer"):
            ld.build_model(tokenizer=ld.testing.char_tokenizer(), kind="hooked")


def test_model_without_tokenizer_is_a_clear_error():
    model = ld.build_model(d_vocab=20)
    with pytest.raises(ld.LensDigitsError, match="no tokenizer"):
        ld.run_sweep(model, scales=[1], n_per_scale=5)


def test_out_of_memory_names_the_flag_to_change(native_model, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(native_model, "run_with_hooks", oom)
    with pytest.raises(ld.LensDigitsError, match=r"out of memory .*--batch-size 16"):
        ld.run_sweep(native_model, scales=[2], n_per_scale=60, batch_size=32)


def test_multi_device_options_reach_transformer_lens(llama_dir, monkeypatch):
    from lens_digits import models

    seen = {}
    real = models.bridge_class().boot_transformers

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, device="cpu", dtype=kwargs["dtype"])

    monkeypatch.setattr(models.bridge_class(), "boot_transformers", spy)
    ld.load_model(llama_dir, device_map="auto", n_devices=2)
    assert seen["device_map"] == "auto" and seen["n_devices"] == 2 and seen["device"] is None


def test_an_architecture_transformer_lens_lacks_says_so(tmp_path):
    import transformers

    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:
        SUPPORTED_ARCHITECTURES = {}
    if "BioGptForCausalLM" in SUPPORTED_ARCHITECTURES:
        pytest.skip("this TransformerLens supports BioGPT")
    tok = ld.testing.char_tokenizer()
    cfg = transformers.BioGptConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "biogpt")
    tok.save_pretrained(tmp_path / "biogpt")
    with pytest.raises(ld.ModelLoadError, match="does not support the architecture") as e:
        ld.load_model(tmp_path / "biogpt", device="cpu")
    assert "network" not in str(e.value) and "hub" not in str(e.value)


def test_a_bad_value_from_the_loader_is_not_called_a_network_failure(monkeypatch):
    from lens_digits import models

    def bad(*args, **kwargs):
        raise ValueError("rope_scaling must have a 'type' field")

    monkeypatch.setattr(models.bridge_class(), "boot_transformers", bad)
    with pytest.raises(ld.ModelLoadError, match="could not load 'someone/model': rope_scaling") as e:
        ld.load_model("someone/model", device="cpu")
    assert "Without network" not in str(e.value)


def test_progress_false_hides_bars_only_while_loading(llama_dir):
    import transformers

    assert transformers.utils.logging.is_progress_bar_enabled()
    seen = []
    real = ld.models.bridge_class().boot_transformers

    def spy(*args, **kwargs):
        seen.append(transformers.utils.logging.is_progress_bar_enabled())
        return real(*args, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(ld.models.bridge_class(), "boot_transformers", spy):
        ld.load_model(llama_dir, device="cpu", progress=False)
    assert seen == [False] and transformers.utils.logging.is_progress_bar_enabled()


def test_run_sweep_leaves_the_global_random_state_alone(native_model):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    ld.run_sweep(native_model, scales=[1, 2], n_per_scale=30, methods=["logit_lens", "probe"], target="first")
    assert torch.equal(torch.get_rng_state(), before)
