"""The methods that wrap TransformerLens' tools.analysis: a clear error where a release lacks it, and their small helpers."""

import sys

import pytest
import torch

import lens_digits as ld
from lens_digits.errors import LensDigitsError, TransformerLensVersionError
from lens_digits.methods import method_class
from lens_digits.methods.interventions.attribution import spearman
from lens_digits.methods.lenses.numbers import place_positions
from lens_digits.model.loading import ANALYSIS_TOOLS_SINCE, analysis_tools, transformer_lens_version
from lens_digits.problems.tasks import TaskConfig, generate_problems
from lens_digits.residuals.collect import collect_residuals

WRAPPED = ["jacobian_lens", "attribution", "attribution_operands", "dla"]

try:
    import transformer_lens.tools.analysis  # noqa: F401

    HAS_TOOLS = True
except ImportError:
    HAS_TOOLS = False


@pytest.fixture
def no_tools(monkeypatch):
    """A TransformerLens without ``tools.analysis`` (releases before 3.9): importing it fails, as it does there."""
    monkeypatch.setitem(sys.modules, "transformer_lens.tools.analysis", None)


@pytest.mark.parametrize("name", WRAPPED)
def test_without_the_tools_each_method_stops_with_one_line_naming_the_version(name, char_tok, no_tools):
    model = ld.build_model(tokenizer=char_tok, n_layers=2)
    with pytest.raises(TransformerLensVersionError) as e:
        ld.methods.make_method(name, ld.ModelAdapter.wrap(model))
    message = str(e.value)
    assert "\n" not in message and name in message and ANALYSIS_TOOLS_SINCE in message and transformer_lens_version() in message
    assert isinstance(e.value, LensDigitsError)


def test_without_the_tools_a_sweep_of_them_stops_before_running_the_model(char_tok, no_tools, monkeypatch):
    model = ld.build_model(tokenizer=char_tok, n_layers=2)
    monkeypatch.setattr(ld.ModelAdapter, "run_with_hooks", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(TransformerLensVersionError, match="pip install"):
        ld.run_sweep(model, scales=[1], n_per_scale=4, methods=["logit_lens", "dla"], target="first")


@pytest.mark.skipif(not HAS_TOOLS, reason=f"TransformerLens {transformer_lens_version()} has no tools.analysis (3.9 and 4.3 have it)")
def test_with_the_tools_they_are_found():
    assert analysis_tools("dla").JacobianLens.__name__ == "JacobianLens"


@pytest.mark.parametrize("name", WRAPPED)
def test_the_methods_are_registered_on_both_lines(name):
    assert method_class(name).name == name  # registering needs nothing of tools.analysis: only building them does


def test_spearman_is_a_rank_correlation():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone: 1 whatever the shape
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.8660254)  # ties: mean ranks
    assert spearman(torch.tensor([1.0]), torch.tensor([2.0])) != spearman(torch.tensor([1.0]), torch.tensor([2.0]))  # NaN


def test_place_positions_by_digit_and_by_token():
    text = {1: "1", 2: "2", 3: "12", 4: "-"}.__getitem__
    labels, index = place_positions(torch.tensor([[1, 2], [2, -1]]), text)
    assert labels == ["units", "tens"] and index.tolist() == [[1, 0], [0, -1]]
    labels, index = place_positions(torch.tensor([[3, 1], [4, 3]]), text)
    assert labels == ["token 1", "token 2"] and index.tolist() == [[0, 1], [0, 1]]


@pytest.mark.skipif(not HAS_TOOLS, reason=f"TransformerLens {transformer_lens_version()} has no tools.analysis (3.9 and 4.3 have it)")
def test_option_checks_are_one_line_errors(char_tok):
    model = ld.ModelAdapter.wrap(ld.build_model(tokenizer=char_tok, n_layers=2))
    with pytest.raises(LensDigitsError, match="max_prompts must be an integer of at least 1"):
        ld.methods.make_method("jacobian_lens", model, options={"max_prompts": 0})
    with pytest.raises(LensDigitsError, match="pairs must be a positive integer"):
        ld.methods.make_method("attribution", model, options={"pairs": 0})
    data = collect_residuals(model, generate_problems(TaskConfig(scales=[1], n_per_scale=2, n_train=0, n_val=0)))
    with pytest.raises(LensDigitsError, match="reads target 'first'"):
        method_class("attribution")().score(model, data, "answer")
