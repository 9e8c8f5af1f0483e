"""Settings are validated in the library, so the API, notebooks and the command line fail alike (run_sweep's checks: test_sweep.py)."""

import subprocess
import sys
import warnings

import pytest

from lens_digits.runs.config import SweepConfig


def test_config_checks_types_for_users_without_a_type_checker():
    # The test suite type-checks every call (jaxtyping + beartype); a user's session does not, so check in a plain process.
    script = (
        "from lens_digits.runs.config import SweepConfig\n"
        "for kw in ({'prepend_bos': 'yes'}, {'batch_size': 2.5}, {'chat': 'no'}):\n"
        "    try:\n"
        "        SweepConfig(**kw)\n"
        "    except ValueError as e:\n"
        "        print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [
        "LensDigitsError prepend_bos must be True, False or None (follow the model), got 'yes'",
        "LensDigitsError batch_size must be an integer, got 2.5",
        "LensDigitsError chat must be True or False, got 'no'",
    ]


def test_sweep_config_round_trips_and_skips_unknown_keys():
    config = SweepConfig(methods=["logit_lens", "probe"], targets="both", subset="solved", batch_size=8)
    assert SweepConfig.from_dict(config.to_dict()) == config
    with pytest.warns(UserWarning, match="future_option"):
        again = SweepConfig.from_dict(config.to_dict() | {"future_option": 1})
    assert again == config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SweepConfig.from_dict(config.to_dict())


def test_max_iter_reaches_the_linear_probe_and_is_checked():
    from lens_digits.errors import LensDigitsError
    from lens_digits.methods.base import make_method
    from lens_digits.problems.tasks import TaskConfig
    from lens_digits.runs.config import method_settings

    config = SweepConfig(probe_max_iter=7)
    settings = method_settings(TaskConfig(scales=[1], n_per_scale=5), config)
    assert make_method("probe", None, settings).max_iter == 7
    assert make_method("circular_probe", None, settings).name == "circular_probe"  # closed form: takes and ignores it
    assert SweepConfig.from_dict(config.to_dict()).probe_max_iter == 7
    with pytest.raises(LensDigitsError, match="--max-iter"):
        SweepConfig(probe_max_iter=0)
