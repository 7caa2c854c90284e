"""Registry service: which models exist and what serves them."""
