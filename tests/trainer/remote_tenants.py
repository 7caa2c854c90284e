"""Two new tenants of the running stack, the first one's remote fine-tuning API (in the stack's remotes
file) reached with the second one's key, for the openai_compatible backend's stack tests (imported by
its basename: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from openai import OpenAI

from coachforge_launcher.stack import REMOTES_FILE
from coachforge_shared.auth import add_api_key, create_tenant
from coachforge_shared.db import Database


@contextmanager
def tenants_with_remote(stack: Any, tenant: str, remote_tenant: str, base_url: str) -> Iterator[dict[str, str]]:
    """API keys of ``tenant`` and ``remote_tenant`` (created now); ``tenant``'s remote is ``base_url`` with
    ``remote_tenant``'s key while the block runs."""
    keys = {t: f"cf-{t}-{secrets.token_hex(12)}" for t in (tenant, remote_tenant)}
    db = Database(stack.database_url)
    try:
        for t, key in keys.items():
            create_tenant(db, t)
            add_api_key(db, t, key)
    finally:
        db.dispose()
    remotes = stack.data_dir / REMOTES_FILE
    remotes.write_text(json.dumps({tenant: {"base_url": base_url, "api_key": keys[remote_tenant]}}))
    try:
        yield keys
    finally:
        remotes.unlink(missing_ok=True)


def client(stack: Any, key: str) -> OpenAI:
    """The official SDK on the stack as the tenant of ``key``."""
    return OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=300)


def training_file(sdk: OpenAI, topic: str, answer: str) -> str:
    """Ten small chat examples about ``topic`` (``{n}`` in both texts numbers them), uploaded: the fewest a
    job accepts."""
    lines = [json.dumps({"messages": [{"role": "user", "content": f"{topic.format(n=i + 2)} What now?"},
                                      {"role": "assistant", "content": answer.format(n=i + 2)}]})
             for i in range(10)]
    return sdk.files.create(file=(f"{topic.split()[0].lower()}.jsonl", ("\n".join(lines) + "\n").encode()),
                            purpose="fine-tune").id
