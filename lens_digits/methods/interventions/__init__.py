"""Interventions: methods that run the model with something changed or traced (activation patching, attribution patching, dla)."""
