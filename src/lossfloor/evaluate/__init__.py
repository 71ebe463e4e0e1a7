"""Evaluating models: the diagnosis against J*, NELBO, sample metrics, samplers and power-law fits."""
