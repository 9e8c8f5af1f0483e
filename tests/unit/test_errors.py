"""Errors for bad input: one family under ValueError, and messages cut to one line for the command line."""

import pytest

from lens_digits.errors import (
    BoundaryMergeError,
    ContextLengthError,
    LensDigitsError,
    ModelLoadError,
    OutputError,
    RunDirectoryError,
    first_line,
)


@pytest.mark.parametrize("cls", [BoundaryMergeError, ContextLengthError, ModelLoadError, OutputError, RunDirectoryError])
def test_every_error_is_a_lens_digits_error_and_a_value_error(cls):
    assert issubclass(cls, LensDigitsError) and issubclass(LensDigitsError, ValueError)
    with pytest.raises(ValueError, match="what to do"):
        raise cls("what to do")


def test_first_line_joins_lines_and_cuts_long_messages():
    assert first_line(ValueError("bad\n  input\tthere ")) == "bad input there"
    assert first_line(KeyError()) == "KeyError"  # no message: the type's name
    assert first_line(ValueError("y" * 200)) == "y" * 200
    assert first_line(ValueError("x" * 250)) == "x" * 200 + "..."
    assert first_line(ValueError("x" * 250), limit=10) == "x" * 10 + "..."
