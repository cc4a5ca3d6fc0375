"""mmmed: teach a frozen Hugging Face causal LLM to read ECGs and chest X-rays."""

__version__ = "0.1.0"
