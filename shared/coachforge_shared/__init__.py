"""CoachForge common library shared by every service."""
