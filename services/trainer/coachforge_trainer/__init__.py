"""Trainer service: fine-tuning jobs and the workers that run them."""
