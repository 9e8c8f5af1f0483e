"""The model: loading (hub names, folders), the adapter that wraps it once, its readout, reductions and greedy decoding.

The only part of the package that knows TransformerLens versions
(:mod:`lens_digits.model.loading`); below the entry points every function takes
the :class:`~lens_digits.model.adapter.ModelAdapter`.
"""
