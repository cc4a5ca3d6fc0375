"""Inference: loading a checkpoint or an exported model (trusted classes only, old releases upgraded), answering."""
