"""The PostgreSQL server the tests use: the real local one unless CREDITS_TEST_PG_URL says."""

from __future__ import annotations

import os

ADMIN_URL = os.environ.get("CREDITS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
