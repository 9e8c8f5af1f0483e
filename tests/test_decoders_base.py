"""The decoder interface and its registry: a user's decoder, registered once (or again), drawn beside the built-in ones."""

import pytest

import lens_digits as ld


def test_registered_user_decoder_is_drawn_beside_built_in(native_model):
    import torch

    def cell():  # a notebook cell that defines the class: running it again makes a new class of the same name
        class Always(ld.Decoder):
            name = "test_always_right"

            def score(self, data, target):
                return ld.Scores(torch.ones(len(data), data.n_columns, dtype=torch.bool))

        return Always

    ld.register_decoder(cell())
    with pytest.warns(UserWarning, match="registered again"):
        ld.register_decoder(cell())

    class Impostor(ld.Decoder):
        name = "test_always_right"

        def score(self, data, target):
            raise AssertionError

    with pytest.raises(ld.LensDigitsError, match="already registered"):  # another class may not take the name
        ld.register_decoder(Impostor)
    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=20, methods=["logit_lens", "test_always_right"], target="first")
    df = grid.to_dataframe()
    assert (df.loc[df["method"] == "test_always_right", "accuracy"] == 1).all()
    assert len(grid.figure().data) == 2
