"""CoachForge evaluator service: OpenAI-compatible evals, graders, runs as jobs, comparisons."""
