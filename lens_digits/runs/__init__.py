"""Runs: sweeps (problems to grid), refits on cached residuals, studies over many models, and who runs them (local, Ray)."""
