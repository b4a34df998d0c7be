"""Mirror maintenance: load a wallet from the ledger, mirror credits, set status, snapshot.

Redis is a fast mirror of the PostgreSQL ledger, not the source of truth. The reconciler
loads wallets (``load_wallet``) at start-up, when an authorisation answers
``wallet_not_loaded`` and periodically to report drift; the purchase path mirrors credits it
has posted (``credit``).

Mirror formula (``load_wallet``)::

    mirror.available = max(0, ledger.available - sum(in-flight) - sum(active holds))
    mirror.reserved  = sum(in-flight) + sum(active holds)

In-flight events and holds have not reached the ledger yet (they post at settlement), so
the ledger's available still contains them. Ledger versions (a per-wallet monotonic
sequence, e.g. the hash-chain position) make loads safe against concurrent settlement: see
``lua/load_wallet.lua`` and ``lua/settle.lua``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aggregator.decision import WalletStatus, effective_status
from aggregator.policy import MAX_CREDITS, ledger_version_arg
from aggregator.redis_keys import require_id
from aggregator.replies import as_list, integer, text
from aggregator.wallet_store import WalletStore
from domain.errors import InvalidInput
from domain.money import require_int


@dataclass(frozen=True, slots=True)
class WalletMirror:
    """A wallet's mirror as read by :func:`snapshot` (``reserved = in_flight + holds``)."""

    wallet_id: str
    available: int
    in_flight_total: int
    holds_total: int
    account_status: WalletStatus
    loaded_version: int
    applied_version: int

    def __post_init__(self) -> None:
        assert min(self.available, self.in_flight_total, self.holds_total) >= 0

    @property
    def reserved(self) -> int:
        return self.in_flight_total + self.holds_total

    @property
    def status(self) -> WalletStatus:
        """The status authorisation applies: frozen, premium-paused (review or empty), active."""
        return effective_status(self.account_status, self.available)


class LoadOutcome(StrEnum):
    LOADED = "loaded"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class LoadResult:
    """``shortfall`` > 0: the ledger had less than the mirror's reservations (available was
    floored at 0; some in-flight events may fail to post, an operator should look).
    ``drift`` is previous mirror available minus the new one (> 0: the mirror was too
    generous). ``healed``: the cached reserved totals disagreed with their maps and were fixed.
    """

    outcome: LoadOutcome
    available: int
    in_flight_total: int
    holds_total: int
    shortfall: int
    drift: int
    healed: bool


async def load_wallet(
    store: WalletStore,
    wallet_id: str,
    *,
    ledger_available: int,
    ledger_version: int,
    status: WalletStatus | None = None,
) -> LoadResult:
    """Set the mirror from a ledger snapshot taken at ``ledger_version``.

    ``STALE`` (nothing changed) when the mirror already reflects a newer version: re-read the
    ledger and retry. ``status`` None keeps the mirror's account status, so a reload racing
    an operator's :func:`set_status` cannot undo it; pass it to repair the status.
    """
    require_int(ledger_available, field="ledger_available", minimum=0, maximum=MAX_CREDITS)
    version = ledger_version_arg(ledger_version)
    keys = store.keys.wallet(wallet_id)
    raw = await store.scripts.load_wallet(
        keys=[keys.wallet, keys.in_flight, keys.holds],
        args=[ledger_available, "" if status is None else _status_arg(status), version],
    )
    reply = as_list(raw)
    return LoadResult(
        outcome=LoadOutcome(text(reply[0])),
        available=integer(reply[1]),
        in_flight_total=integer(reply[2]),
        holds_total=integer(reply[3]),
        shortfall=integer(reply[4]),
        drift=integer(reply[5]),
        healed=integer(reply[6]) == 1,
    )


class CreditOutcome(StrEnum):
    CREDITED = "credited"
    DUPLICATE = "duplicate"
    ALREADY_REFLECTED = "already_reflected"
    WALLET_NOT_LOADED = "wallet_not_loaded"


@dataclass(frozen=True, slots=True)
class CreditResult:
    outcome: CreditOutcome
    available_after: int
    reserved_after: int


async def credit(
    store: WalletStore,
    wallet_id: str,
    credits: int,
    idempotency_id: str,
    *,
    ledger_version: int | None = None,
) -> CreditResult:
    """Mirror a committed ledger posting that added ``credits`` to available (purchase, bonus).

    Idempotent on ``idempotency_id`` (use the ledger transaction's source id) for the record
    TTL, and on ``ledger_version`` for ever: a posting the mirror was loaded with is
    ``ALREADY_REFLECTED``. On an unloaded wallet nothing is credited (the next load reads it
    from the ledger). A credit lifts an exhaustion pause by itself.
    """
    require_int(credits, field="credits", minimum=1, maximum=MAX_CREDITS)
    require_id(idempotency_id, field="idempotency_id")
    version = ledger_version_arg(ledger_version)
    keys = store.keys.wallet(wallet_id)
    raw = await store.scripts.credit(
        keys=[keys.wallet, keys.credit(idempotency_id)],
        args=[credits, version, store.record_ttl_ms],
    )
    reply = as_list(raw)
    return CreditResult(CreditOutcome(text(reply[0])), integer(reply[1]), integer(reply[2]))


async def set_status(
    store: WalletStore, wallet_id: str, status: WalletStatus
) -> WalletStatus | None:
    """Apply an account status (freeze, review pause, reinstate) to a loaded mirror now.

    Returns the effective status, or None if the wallet is not loaded (its next load carries
    the ledger's status). Call it after the status change is committed in PostgreSQL.
    """
    keys = store.keys.wallet(wallet_id)
    reply = as_list(await store.scripts.set_status(keys=[keys.wallet], args=[_status_arg(status)]))
    return WalletStatus(text(reply[1])) if text(reply[0]) == "updated" else None


async def snapshot(store: WalletStore, wallet_id: str) -> WalletMirror | None:
    """The wallet's mirror, or None if it is not loaded. One read; consistent (one hash)."""
    keys = store.keys.wallet(wallet_id)
    fields = await store.client.hmget(
        keys.wallet,
        ["loaded", "available", "in_flight", "held", "status", "loaded_version", "applied_version"],
    )
    loaded, available, in_flight, held, status, loaded_version, applied_version = fields
    if loaded is None or text(loaded) != "1":
        return None
    return WalletMirror(
        wallet_id=wallet_id,
        available=integer(available),
        in_flight_total=integer(in_flight or 0),
        holds_total=integer(held or 0),
        account_status=WalletStatus(text(status)) if status else WalletStatus.ACTIVE,
        loaded_version=integer(loaded_version) if loaded_version is not None else -1,
        applied_version=integer(applied_version) if applied_version is not None else -1,
    )


def _status_arg(status: object) -> str:
    if not isinstance(status, WalletStatus):
        raise InvalidInput("status must be a WalletStatus", field="status")
    return status.value
