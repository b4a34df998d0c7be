"""Mirror a ledger posting that removed credits outside usage (a purchase refund).

The mirror had no such operation: usage leaves through authorise/settle, and ``credit`` only
adds. ``debit`` is its mirror image (``lua/debit.lua``): idempotent on an id for the record TTL
and on the ledger version for ever, never below zero (a shortfall is reported instead).

Why not ``load_wallet`` from a fresh ledger snapshot instead: a load needs the in-flight map and
the ledger read at one version and must retry when settlement moves in between (the
reconciler's loop); a debit by the posting's own version is one atomic script and composes with
concurrent settlement and credits exactly like ``credit`` does.

The script is registered here rather than in ``aggregator/scripts.py`` so this operation stays
in its own module; it uses the same ``lib.lua`` prelude and conventions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

from redis.commands.core import AsyncScript

from aggregator.policy import MAX_CREDITS, ledger_version_arg
from aggregator.redis_keys import require_id
from aggregator.replies import as_list, integer, text
from aggregator.scripts import RedisClient
from aggregator.wallet_store import WalletStore
from domain.money import require_int


class DebitOutcome(StrEnum):
    DEBITED = "debited"
    DUPLICATE = "duplicate"
    ALREADY_REFLECTED = "already_reflected"
    WALLET_NOT_LOADED = "wallet_not_loaded"


@dataclass(frozen=True, slots=True)
class DebitResult:
    outcome: DebitOutcome
    available_after: int
    reserved_after: int
    shortfall: int


@cache
def debit_source() -> str:
    lua = resources.files("aggregator").joinpath("lua")
    return "\n".join(
        lua.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in ("lib", "debit")
    )


def _script(client: RedisClient) -> AsyncScript:
    """Register on ``client`` (hashes the source, no I/O). Per call: refunds are rare, and a
    per-client cache would be process-global mutable state."""
    return client.register_script(debit_source())


def debit_key(store: WalletStore, wallet_id: str, idempotency_id: str) -> str:
    """``P:{w}:debit:<id>``: in the wallet's slot, beside ``credit:<id>`` records."""
    return f"{store.keys.wallet(wallet_id).base}:debit:{idempotency_id}"


async def debit(
    store: WalletStore,
    wallet_id: str,
    credits: int,
    idempotency_id: str,
    *,
    ledger_version: int | None = None,
) -> DebitResult:
    """Mirror a committed ledger posting that removed ``credits`` from available.

    Idempotent on ``idempotency_id`` (use the ledger transaction's source id) and on
    ``ledger_version`` (a posting the mirror was loaded with is ``ALREADY_REFLECTED``). On an
    unloaded wallet nothing happens (the next load reads the ledger).
    """
    require_int(credits, field="credits", minimum=1, maximum=MAX_CREDITS)
    require_id(idempotency_id, field="idempotency_id")
    version = ledger_version_arg(ledger_version)
    keys = store.keys.wallet(wallet_id)
    raw = await _script(store.client)(
        keys=[keys.wallet, debit_key(store, wallet_id, idempotency_id)],
        args=[credits, version, store.record_ttl_ms],
    )
    reply = as_list(raw)
    return DebitResult(
        DebitOutcome(text(reply[0])), integer(reply[1]), integer(reply[2]), integer(reply[3])
    )
