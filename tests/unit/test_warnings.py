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
