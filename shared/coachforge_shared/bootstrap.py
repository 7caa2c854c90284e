"""Process start-up helpers shared by every service entry point."""

from __future__ import annotations

from coachforge_shared.auth import read_or_create_secret
from coachforge_shared.settings import PlatformSettings


def internal_token(platform: PlatformSettings) -> str:
    """The token services present to each other: the configured one, else the one kept in data_dir."""
    token, _ = read_or_create_secret(platform.data_dir / "internal-token", platform.internal_token)
    return token
