"""Warnings point at the user's line (the first frame outside the package), however deep in the package they start."""

import warnings

from lens_digits.problems.tasks import TaskConfig, generate_problems


def test_a_warning_from_deep_in_the_package_names_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate_problems(TaskConfig(scales=[1], n_per_scale=60, seed=0))  # scale 1 has 100 problems: shared out
    [w] = [w for w in caught if "distinct" in str(w.message)]
    assert w.filename == __file__, w.filename


def test_a_settings_warning_names_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TaskConfig.from_dict({"scales": [1], "n_per_scale": 5, "not_a_setting": 1})  # known_fields warns, two calls down
    [w] = [w for w in caught if "not_a_setting" in str(w.message)]
    assert w.filename == __file__, w.filename


def test_the_scale_sharing_warning_names_only_the_problems_the_sweep_uses():
    import lens_digits as ld

    model = ld.testing.tiny_model()
    for methods, says, never in (
        (["logit_lens"], "using 20 of the 60 test problems asked for, each once (and 60 train problems", "validation"),
        (["probe"], "using 20 test, 60 train and 20 validation, each once", "baseline"),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ld.run_sweep(model, scales=[1], n_per_scale=60, methods=methods, target="first", progress=False)
        [w] = [w for w in caught if "distinct" in str(w.message)]
        assert says in str(w.message) and never not in str(w.message), str(w.message)
        assert w.filename == __file__, w.filename
