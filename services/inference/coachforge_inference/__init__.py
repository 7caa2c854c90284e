"""Inference service: OpenAI-compatible chat completions served by vLLM engines."""
