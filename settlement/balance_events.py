"""Usage's balance notifications: one ``balance_changed`` per wallet per settled batch (pure).

Why: live updates (``GET /wallet/events/stream``) and every other reader of ``wallet.events``
learn of a wallet's balance from ``balance_changed``. Purchases and refunds announce theirs
when they post; usage is far more frequent, so settlement announces it once per wallet per
batch, with the wallet's state after the batch settled, instead of once per event (which would
double the messages on the consume path).

What each one says: ``available_credits`` / ``reserved_credits`` are the mirror's, right after
this batch's settle (in-flight reservations of later consumes included); ``delta_credits`` is
minus the credits this batch posted for the wallet (what left its balance); ``cause`` is
``usage``; ``source_id`` the last event of the wallet posted in the batch. Its ``event_id``
(``balance:usage:<wallet>:<ledger version after the batch>``) names the state, so the same
state is announced under the same id and consumers deduplicate.

A batch that posts nothing for a wallet (all duplicates, free events, refusals) announces
nothing for it: its balance did not change. So a crash between the ledger commit and this
announcement loses that one notification (the redelivered batch finds duplicates); the
wallet's next settled batch announces its state again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from aggregator.authorize import SettleResult
from meter.consume import derived_id
from meter.schema import BalanceChanged
from settlement.ledger.batch_writer import PostedUsage

USAGE_CAUSE = "usage"


def usage_balance_changes(
    posted: Iterable[PostedUsage],
    settled: Sequence[SettleResult],
    versions: Mapping[str, int],
    at: datetime,
) -> tuple[BalanceChanged, ...]:
    """One ``balance_changed`` per wallet that had credits posted and is in the mirror."""
    charged: dict[str, int] = {}
    last: dict[str, str] = {}
    for each in posted:
        if each.credits > 0:
            charged[each.wallet_id] = charged.get(each.wallet_id, 0) + each.credits
            last[each.wallet_id] = each.event_id
    changes: list[BalanceChanged] = []
    for result in settled:
        wallet_id = result.wallet_id
        if not result.loaded or wallet_id not in charged:
            continue
        state = f"{wallet_id}:{versions.get(wallet_id, last[wallet_id])}"
        changes.append(
            BalanceChanged(
                type="balance_changed",
                event_id=derived_id("balance:usage", state),
                wallet_id=wallet_id,
                occurred_at=at,
                available_credits=result.available_after,
                reserved_credits=result.reserved_after,
                delta_credits=-charged[wallet_id],
                cause=USAGE_CAUSE,
                source_id=last[wallet_id],
            )
        )
    return tuple(changes)
