"""Loading and building models: TransformerLens versions, dtypes, devices, and loader failures named."""

import pytest
import torch
from conftest import HAS_HOOKED

import lens_digits as ld
from lens_digits.model.loading import hooked_transformer_class, model_kind, transformer_lens_version


def test_feature_detection_matches_installed_version():
    major = int(transformer_lens_version().split(".")[0])
    assert (hooked_transformer_class() is not None) == (major < 4) == HAS_HOOKED


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
    assert len(grid.to_dataframe(breakdown=False)) == 2 * 2 * (hooked_model.cfg.n_layers + 1)


def test_hooked_kind_built_where_available_else_refused():
    if HAS_HOOKED:
        assert model_kind(ld.build_model(tokenizer=ld.testing.char_tokenizer(), kind="hooked")) == "HookedTransformer"
    else:
        with pytest.raises(ld.LensDigitsError, match="has no HookedTransformer"):
            ld.build_model(tokenizer=ld.testing.char_tokenizer(), kind="hooked")


def test_multi_device_options_reach_transformer_lens(llama_dir, monkeypatch):
    from lens_digits.model import loading as models

    seen = {}
    real = models.bridge_class().boot_transformers

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, device="cpu", dtype=kwargs["dtype"])

    monkeypatch.setattr(models.bridge_class(), "boot_transformers", spy)
    ld.load_model(llama_dir, device_map="auto", n_devices=2)
    assert seen["device_map"] == "auto" and seen["n_devices"] == 2 and seen["device"] is None


def test_a_bad_value_from_the_loader_is_not_called_a_network_failure(monkeypatch):
    from lens_digits.model import loading as models

    def bad(*args, **kwargs):
        raise ValueError("rope_scaling must have a 'type' field")

    monkeypatch.setattr(models.bridge_class(), "boot_transformers", bad)
    monkeypatch.setattr(models, "cached", lambda name: True)  # as if it had been downloaded before
    with pytest.raises(ld.ModelLoadError, match="could not load 'someone/model': rope_scaling") as e:
        ld.load_model("someone/model", device="cpu")
    assert "Without network" not in str(e.value)


def test_progress_false_hides_bars_only_while_loading(llama_dir):
    import transformers

    assert transformers.utils.logging.is_progress_bar_enabled()
    seen = []
    real = ld.model.loading.bridge_class().boot_transformers

    def spy(*args, **kwargs):
        seen.append(transformers.utils.logging.is_progress_bar_enabled())
        return real(*args, **kwargs)

    import unittest.mock

    with unittest.mock.patch.object(ld.model.loading.bridge_class(), "boot_transformers", spy):
        ld.load_model(llama_dir, device="cpu", progress=False)
        ld.load_model(llama_dir, device="cpu")  # a local folder: no bars by default
        ld.load_model(llama_dir, device="cpu", progress=True)
    assert seen == [False, False, True] and transformers.utils.logging.is_progress_bar_enabled()


# ---- hub names without a hub ----------------------------------------------------------------------


def test_an_unreachable_hub_fails_at_once_unless_the_model_is_cached(llama_dir, tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, transformers used to retry for a minute; now a closed hub is noticed and the cache used."""
    import shutil

    from lens_digits.model import loading as models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ld.ModelLoadError, match="cannot reach the Hugging Face hub .* not in the local cache"):
        ld.load_model("someone/not-cached-anywhere", device="cpu")
    with pytest.raises(ld.ModelLoadError, match="no folder of that name here either"):
        ld.load_model("my_checkpoint", device="cpu")
    # a model in the local Hugging Face cache loads from it, offline
    from huggingface_hub import constants

    snapshot = tmp_path / "models--someone--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(llama_dir, snapshot)
    (tmp_path / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "models--someone--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    before = constants.HF_HUB_OFFLINE
    model = ld.load_model("someone/tiny", device="cpu", progress=False)
    assert model.cfg.n_layers == 3
    assert constants.HF_HUB_OFFLINE == before, "offline mode is switched on for the load only"


def test_a_hub_name_that_is_not_cached_fails_at_once_when_the_hub_is_off(monkeypatch):
    from lens_digits.model import loading as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    monkeypatch.setattr(models.bridge_class(), "boot_transformers", lambda *a, **k: called.append(a))
    with pytest.raises(ld.ModelLoadError, match="switched off .*'someone/model' is not in the local cache"):
        ld.load_model("someone/model", device="cpu")
    assert called == []  # nothing was tried
