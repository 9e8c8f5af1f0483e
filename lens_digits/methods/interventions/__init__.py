"""Interventions: methods that run the model with something changed (activation patching at the answer and the operands)."""
