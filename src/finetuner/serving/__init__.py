"""Serving an export: `finetuner serve` (a KServe custom predictor with an OpenAI-compatible
embeddings route) and `finetuner deploy` (its InferenceService)."""
