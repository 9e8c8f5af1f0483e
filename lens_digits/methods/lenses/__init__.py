"""Lenses: methods that read tokens from each layer through the model's own readout (logit lens, tuned lens, Jacobian lens)."""
