"""Retrieval for uncertainty-guided reasoning: a BM25 knowledge base of documents (``python -m mmmed.knowledge``)."""
