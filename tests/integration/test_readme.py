"""The README's Extending examples run as written (a user's decoder and a one-method lens), on a tiny model."""

import re

from conftest import REPO

import lens_digits as ld

README = REPO / "README.md"


def block_with(text: str) -> str:
    """The README's python code block that contains ``text``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if text in b]
    assert len(found) == 1, f"expected one README block with {text!r}"
    return found[0]


def test_the_extending_examples_run_as_written():
    model = ld.testing.tiny_model()
    space = {"model": model}
    exec(block_with("class NearestCentroid"), space)  # noqa: S102 - the README's own code
    assert space["grid"].methods == ["logit_lens", "centroid"]
    assert ld.methods.METHODS["centroid"].uses == {"seed": "seed"}
    assert space["grid"].info["methods"]["centroid"] == {"seed": 0}  # what it was built with, in run.json
    exec(block_with("class ScaledLens"), space)  # noqa: S102
    grid = space["grid"]
    assert grid.methods == ["logit_lens", "scaled_lens"]
    rows = grid.main().set_index(["method", "target", "scale", "layer"])["n"]
    assert rows["scaled_lens"].equals(rows["logit_lens"])  # every cell of the logit lens, on the same problems
    assert grid.info["methods"]["scaled_lens"]["readout"]["steps"][1] == "unembedding"
    # its one method is what it reads through: the readout of twice the residual, as plain torch computes it
    from lens_digits.residuals import collect_residuals

    data = collect_residuals(model, ld.generate_problems(ld.TaskConfig(scales=[2], n_per_scale=6, n_train=0, n_val=0)))
    lens = ld.methods.METHODS["scaled_lens"].from_model(model)
    top1, _, _ = lens.decode(data)
    h = data.resid[:, 1, 0]  # layer column 1, first answer position
    want = model.unembed(model.ln_final(2.0 * h[:, None, :]))[:, 0].argmax(-1)
    assert (top1[:, 1, 0] == want).float().mean() >= 0.99
