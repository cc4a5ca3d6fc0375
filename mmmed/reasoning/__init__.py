"""Reasoning at inference: sampled answers, their uncertainty, and retrieval when the model is unsure."""
