"""Probes: linear and circular classifiers per digit place, fitted on train residuals with a control task."""
