"""Residuals: every layer's residual stream at the positions a method reads, collected in batches and cached on disk.

>>> from lens_digits.residuals import ResidualSet, collect_residuals
"""

from lens_digits.residuals.collect import ResidualSet, collect_residuals, gold_ids, tokens_only

__all__ = ["ResidualSet", "collect_residuals", "gold_ids", "tokens_only"]
