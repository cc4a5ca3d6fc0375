"""Evaluation: answer scoring (labels, answer parts, report metrics) and the pictures and run summaries."""
