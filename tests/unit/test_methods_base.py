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

    ld.register_method(cell())
    with pytest.warns(UserWarning, match="registered again"):
        ld.register_method(cell())

    class Impostor(ld.Decoder):
        name = "test_always_right"

        def score(self, data, target):
            raise AssertionError

    with pytest.raises(ld.LensDigitsError, match="already registered"):  # another class may not take the name
        ld.register_method(Impostor)
    grid = ld.run_sweep(native_model, scales=[1, 2], n_per_scale=20, methods=["logit_lens", "test_always_right"], target="first")
    df = grid.to_dataframe()
    assert (df.loc[df["method"] == "test_always_right", "accuracy"] == 1).all()
    assert len([t for t in grid.figure().data if t.type == "heatmap"]) == 2
    # a decoder right everywhere reaches every threshold at layer 0, with no doubt: the marker sits on column 0
    mine = grid.emergence[grid.emergence["method"] == "test_always_right"]
    assert len(mine[mine["carries"] == "all"]) == 2 * 2  # two scales, two thresholds (and rows per number of carries)
    assert (mine[["layer", "ci_low", "ci_high"]] == 0).all().all()


def test_a_decoder_with_fit_but_no_fits_is_warned_about_at_definition():
    with pytest.warns(UserWarning, match="set `fits = True`"):

        class Learner(ld.Decoder):
            name = "test_learner_without_fits"

            def fit(self, train, val):
                self.mean = train.resid.mean()

            def score(self, data, target):
                raise AssertionError

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Honest(ld.Decoder):
            name = "test_learner_with_fits"
            fits = True

            def fit(self, train, val):
                self.mean = train.resid.mean()

            def score(self, data, target):
                raise AssertionError
