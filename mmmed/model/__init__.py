"""The model: the frozen LLM, modality plugins and their encoders' adapters, prompts, and the one assembly."""
