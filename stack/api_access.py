"""The keys ``credits up`` prints: the platform admin key and a demo owner key.

The admin key comes from ``CREDITS_ADMIN_KEY``, else from ``<data dir>/admin.key`` (made on
first start, mode 0600), so restarts of one stack keep one key. The demo key is a key of the
demo wallet's owner, kept in ``<data dir>/demo.key`` and re-issued when the ledger no longer
knows it (a new database under an old data dir).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from api.keys import ApiKeys, Scope
from domain.errors import Unauthenticated
from settlement.ledger.db import open_pool

ADMIN_KEY_FILE = "admin.key"
DEMO_KEY_FILE = "demo.key"


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    tmp.replace(path)


def admin_key(data_dir: Path, configured: str | None) -> str:
    if configured:
        return configured
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        existing = path.read_text().strip()
        if len(existing) >= 32:
            return existing
    made = secrets.token_urlsafe(32)
    _write_secret(path, made)
    return made


async def demo_owner_key(database_url: str, data_dir: Path, wallet_id: str, owner: str) -> str:
    path = data_dir / DEMO_KEY_FILE
    pool = await open_pool(database_url, max_size=1)
    try:
        keys = ApiKeys(pool, admin_token=None)
        if path.exists():
            token = path.read_text().strip()
            try:
                principal = await keys.authenticate(token)
            except Unauthenticated:
                principal = None
            if principal is not None and principal.wallet_id == wallet_id:
                return token
        issued = await keys.issue(
            wallet_id, owner, name="demo owner (credits up)", scopes=list(Scope),
            created_by="credits-up",
        )  # fmt: skip
    finally:
        await pool.close()
    _write_secret(path, issued.token)
    return issued.token
