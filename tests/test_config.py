"""Settings are validated in the library, so the API, notebooks and the command line fail alike."""

import subprocess
import sys
import warnings

import pytest

import lens_digits as ld
from lens_digits.config import SweepConfig


@pytest.mark.parametrize("batch_size", [-1, 0, True, 10**9])
def test_run_sweep_refuses_a_bad_batch_size(native_model, batch_size):
    with pytest.raises(ld.LensDigitsError, match="batch_size"):
        ld.run_sweep(native_model, scales=[1], n_per_scale=10, batch_size=batch_size)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(subset="some"), "unknown subset"),
        (dict(target="middle"), "unknown target"),
        (dict(target=[]), "no target given"),
        (dict(methods=[]), "no methods given"),
        (dict(probe_scope="global"), "unknown probe scope"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(n_per_scale=10**7), "above the limit"),
        (dict(template="{a:q}{b}"), "cannot be filled in"),
    ],
)
def test_run_sweep_refuses_bad_settings_before_running(native_model, kwargs, message, monkeypatch):
    monkeypatch.setattr(native_model, "run_with_hooks", lambda *a, **k: pytest.fail("the model must not run"))
    with pytest.raises(ld.LensDigitsError, match=message):
        ld.run_sweep(native_model, **({"scales": [1], "n_per_scale": 10} | kwargs))


def test_config_checks_types_for_users_without_a_type_checker():
    # The test suite type-checks every call (jaxtyping + beartype); a user's session does not, so check in a plain process.
    script = (
        "from lens_digits.config import SweepConfig\n"
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


def test_a_method_string_is_one_method_not_its_letters(native_model):
    grid = ld.run_sweep(native_model, scales=[1], n_per_scale=10, methods="logit_lens", target="first")
    assert grid.methods == ["logit_lens"]
    assert SweepConfig(methods="logit_lens,probe").methods == ("logit_lens", "probe")


def test_sweep_config_round_trips_and_skips_unknown_keys():
    config = SweepConfig(methods=["logit_lens", "probe"], targets="both", subset="solved", batch_size=8)
    assert SweepConfig.from_dict(config.to_dict()) == config
    with pytest.warns(UserWarning, match="future_option"):
        again = SweepConfig.from_dict(config.to_dict() | {"future_option": 1})
    assert again == config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SweepConfig.from_dict(config.to_dict())
