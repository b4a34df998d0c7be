"""Schema migrations (Alembic, raw SQL revisions) applied programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from domain.errors import InvalidInput

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy form of a libpq URL (Alembic needs it; the app itself uses psycopg)."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    if database_url.startswith("postgresql+psycopg://"):
        return database_url
    raise InvalidInput(f"not a PostgreSQL URL: {database_url!r}", field="database_url")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser interpolation syntax; URLs may contain percent-escapes.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database to ``revision``; an unknown revision is refused, nothing applied."""
    config = alembic_config(database_url)
    known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
    if revision != "head" and revision not in known:
        raise InvalidInput(
            f"unknown migration revision {revision!r}; known: {sorted(known)}", field="revision"
        )
    try:
        command.upgrade(config, revision)
    except CommandError as exc:
        raise InvalidInput(f"migration to {revision!r} refused: {exc}") from exc


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("postgresql://localhost/x"))
    head = script.get_current_head()
    assert head is not None
    return head
