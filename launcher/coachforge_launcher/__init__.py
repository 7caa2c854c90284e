"""All-in-one mode: every CoachForge service, the broker and a CPU vLLM engine under one supervisor."""
