"""The CoachForge web console: server-rendered pages at ``/console`` over the public REST API."""
