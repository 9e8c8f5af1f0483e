"""The Jacobian lens: the logit lens with J = I, the model's own last column, TransformerLens' own readout, its files."""

import json

import pytest
import torch

import lens_digits as ld
from lens_digits.errors import LensDigitsError, NonFiniteError
from lens_digits.methods import JacobianLens, LogitLens
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals

tools = pytest.importorskip("transformer_lens.tools.analysis", reason="the Jacobian lens wraps tools.analysis (TransformerLens >= 3.9)")


@pytest.fixture(scope="module")
def model(llama_dir):
    return ld.load_model(llama_dir, device="cpu", progress=False)


@pytest.fixture(scope="module")
def data(model):
    problems = generate_problems(TaskConfig(scales=[1, 2, 3], n_per_scale=8, seed=3))
    test = collect_residuals(model, [p for p in problems if p.split == "test"])
    train = collect_residuals(model, [p for p in problems if p.split == "train"])
    return train, test


@pytest.fixture(scope="module")
def fitted(model, data):
    lens = JacobianLens.from_model(model, max_prompts=20)
    lens.prepare(data[0], data[0])
    return lens


def test_identity_jacobians_read_as_the_logit_lens_exactly(model, data):
    lens = JacobianLens.from_model(model, identity=True)
    assert lens.lens.source_layers == list(range(model.cfg.n_layers - 1))  # a TransformerLens lens, transported
    for got, want in zip(lens.decode(data[1]), LogitLens.from_model(model).decode(data[1]), strict=True):
        assert torch.equal(got, want)


def test_the_last_column_is_the_models_own_prediction(model, data, fitted):
    _, test = data
    top1, _, logp = fitted.decode(test)
    for i, e in enumerate(test.encoded):
        tokens = torch.tensor([list(e.prompt_ids) + list(e.answer_ids)])
        with torch.inference_mode():
            own = model(tokens)[0, len(e.prompt_ids) - 1 :].float()
        n = len(e.answer_ids)
        assert torch.equal(top1[i, -1, :n], own[:n].argmax(-1))
        torch.testing.assert_close(logp[i, -1, :n], own[:n].log_softmax(-1).gather(1, test.target_ids[i, :n, None])[:, 0])


def test_a_fitted_lens_reads_as_transformer_lens_reads_it(model, data, fitted):
    _, test = data
    assert fitted.lens.n_prompts == 20 and not torch.allclose(fitted.lens.jacobians[0], torch.eye(model.cfg.d_model), atol=1e-3)
    for i in (0, 5, 17):
        e = test.encoded[i]
        pos = len(e.prompt_ids) - 1
        theirs = fitted.lens.readout(model, torch.tensor([list(e.prompt_ids)]), positions=[pos], return_full_logits=True)
        for column in range(1, model.cfg.n_layers):  # their layer k: the output of block k, our column k + 1
            ours = fitted.layer_logits(test.resid[i, column, :1], column).float()
            torch.testing.assert_close(ours, theirs.lens_logits[column - 1], rtol=1e-4, atol=1e-4)


def test_fit_save_load_round_trips_in_transformer_lens_format(model, data, fitted, tmp_path):
    path = fitted.save(tmp_path / "lens")
    assert path.name == "jacobian_lens.pt"
    again = JacobianLens.from_model(model, path=str(tmp_path / "lens"))
    plain = tools.JacobianLens.load(str(path))  # TransformerLens reads the file itself
    for k, m in fitted.lens.jacobians.items():
        assert torch.equal(again.lens.jacobians[k], m) and torch.equal(plain.jacobians[k], m)
    for got, want in zip(again.decode(data[1]), fitted.decode(data[1]), strict=True):
        assert torch.equal(got, want)
    assert again.settings()["loaded_from"] == str(path)


def test_a_published_lens_in_a_folder_loads_offline(model, fitted, tmp_path):
    folder = tmp_path / "published"
    folder.mkdir()
    fitted.lens.save(str(folder / "llama_jacobian_lens.pt"))  # TransformerLens' own writer, its default float16
    lens = JacobianLens.from_model(model, path=str(folder))
    assert lens.lens.source_layers == fitted.lens.source_layers
    torch.testing.assert_close(lens.lens.jacobians[0], fitted.lens.jacobians[0], rtol=1e-2, atol=1e-3)


def test_damaged_or_foreign_files_are_one_line_errors(model, fitted, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a lens")
    with pytest.raises(LensDigitsError, match="cannot be read"):
        JacobianLens.from_model(model, path=str(tmp_path / "bad.pt"))
    with pytest.raises(LensDigitsError, match="no Jacobian lens"):
        JacobianLens.from_model(model, path=str(tmp_path / "none.pt"))
    other = ld.testing.tiny_model(d_model=16)
    with pytest.raises(LensDigitsError, match="cannot be used"):
        JacobianLens.from_model(other, path=str(fitted.save(tmp_path / "x")))


def test_a_sweep_records_the_lens_provenance(model, tmp_path):
    grid = ld.run_sweep(model, scales=[1], n_per_scale=6, n_train=6, methods=["jacobian_lens", "logit_lens"], target="first", n_boot=10)
    saved = grid.save(tmp_path / "run")
    info = json.loads((saved / "run.json").read_text())["methods"]["jacobian_lens"]
    assert info["fitted_on"].startswith("lens_digits train problems") and info["n_prompts"] == 6
    assert info["metadata"]["transformer_lens_fit"] is True and info["metadata"]["corpus"] == info["fitted_on"]  # TransformerLens' record
    assert info["columns"] == list(range(1, model.cfg.n_layers))
    last = grid.to_dataframe(breakdown=False).query(f"layer == {model.cfg.n_layers}")
    assert last.groupby("method")["accuracy"].first().nunique() == 1  # both read the model's own prediction there


def fitted_on_problems(model, data):
    lens = JacobianLens.from_model(model, max_prompts=3)
    lens.prepare(data[0], data[0])
    return lens


def test_a_corpus_fit_records_the_corpus(model, data, tmp_path):
    corpus = tmp_path / "texts.txt"
    corpus.write_text("12+30=42\n\n7+8=15 and 9+9=18\n100+200=300\n")
    lens = JacobianLens.from_model(model, corpus=str(corpus))
    lens.prepare(data[0], data[0])
    assert lens.lens.n_prompts == 3 and lens.settings()["fitted_on"] == f"corpus {corpus}"
    assert not torch.allclose(lens.lens.jacobians[0], fitted_on_problems(model, data).lens.jacobians[0])  # another text, another fit


def test_a_lens_with_non_finite_jacobians_is_refused(model, fitted, tmp_path):
    bad = {k: m.clone() for k, m in fitted.lens.jacobians.items()}
    bad[1][0, 0] = float("nan")
    tools.JacobianLens(bad, n_prompts=1, d_model=model.cfg.d_model).save(str(tmp_path / "bad.pt"), dtype=torch.float32)
    with pytest.raises(NonFiniteError, match="column 2"):
        JacobianLens.from_model(model, path=str(tmp_path / "bad.pt"))
