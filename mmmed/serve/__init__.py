"""Serving a trained model: a web page and an HTTP API over one predictor, with batched answers (serve.py)."""
