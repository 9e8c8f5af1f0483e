"""Batches of equal token length, in a fixed order."""

from lens_digits.model.batching import length_batches


def test_length_batches_groups_equal_lengths_in_a_fixed_order():
    lengths = [5, 3, 5, 5, 3, 7]
    batches = list(length_batches(lengths, 2))
    assert batches == [[1, 4], [0, 2], [3], [5]]
    assert all(len({lengths[i] for i in b}) == 1 for b in batches)
