"""Self-training (Med-Gemini's, after STaR): the model writes rationales, the ones that reach the right answer are
kept, and the model is fine-tuned on them, round after round."""
