"""What a method's cells mean, for figures and pages: what its accuracy counts, and which of its metrics are signed."""

from lens_digits.methods.base import METHODS

__all__ = ["accuracy_means", "is_signed"]


def accuracy_means(name: str) -> str:
    """What a cell's accuracy is for the method called ``name`` (its class's :attr:`Method.accuracy_means`).

    Returns:
        ``accuracy``, ``flip rate``, ...; ``accuracy`` for a name no class has (a difference grid's ``a - b``).
    """
    cls = METHODS.get(name)
    return cls.accuracy_means if cls is not None else "accuracy"


def is_signed(name: str, value: str) -> bool:
    """Whether the method called ``name`` lists metric ``value`` in its :attr:`Method.signed_metrics`.

    Returns:
        True if it does: figures draw the metric on a scale symmetric about zero.
    """
    cls = METHODS.get(name)
    return cls is not None and value in cls.signed_metrics
