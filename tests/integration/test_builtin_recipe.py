"""The built-in model's recipe (``lens_digits.builtin.recipe``): its tokenizer and the validation of TrainConfig."""

import pytest

from lens_digits.builtin.recipe import TrainConfig, builtin_tokenizer
from lens_digits.errors import LensDigitsError


def test_tokenizer_is_one_token_per_character(builtin):
    tok = builtin.tokenizer
    text = "907+58=965"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert ids == builtin_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list(text)
    assert tok.unk_token_id not in ids


BAD_CONFIGS = [
    dict(n_heads=5),
    dict(n_heads=32),
    dict(ops=["div"]),
    dict(ops="add,div"),
    dict(scales="0"),
    dict(steps=0),
    dict(lr=-1.0),
    dict(mixed=2.0),
]


@pytest.mark.parametrize("bad", BAD_CONFIGS)
def test_train_config_rejects_bad_input(bad):
    with pytest.raises(LensDigitsError):
        TrainConfig(**bad)
