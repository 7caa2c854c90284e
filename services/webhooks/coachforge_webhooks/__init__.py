"""Webhooks service: tenants' endpoints told of fine-tuning job and eval run events (Standard Webhooks)."""
