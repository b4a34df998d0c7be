"""A demo community wallet with a month of believable history, posted through the real ledger.

Every id is deterministic, so seeding twice is a no-op (the ledger replays each request), and
the history is stamped over the 30 days before ``now`` by a frozen clock that walks forward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from domain.clock import FrozenClock
from domain.pricing import PricingCatalogue
from domain.quote import quote_add_funds
from settlement.ledger.batch_writer import BatchWriter, UsageCharge
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn

DEMO_WALLET = "wal_demo_community"
DEMO_MEMBERS = (
    ("priya", "owner"),
    ("arjun", "admin"),
    ("meera", "member"),
    ("kabir", "member"),
    ("zoya", "member"),
)
# (feature, relative weight) of a community's daily traffic.
DAILY_MIX = (
    ("api.basic_request", 40),
    ("queue.email_send", 14),
    ("webhooks.trigger", 12),
    ("community.invite_member", 6),
    ("queue.push_notification", 8),
    ("ai.moderation", 5),
    ("ai.summary", 3),
    ("ai.search", 3),
    ("api.heavy_query", 3),
    ("api.analytics_query", 2),
    ("storage.media_optimization", 2),
    ("api.export_data", 1),
)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    wallet_id: str
    members: tuple[str, ...]
    transactions: int


async def seed_demo(
    pool: AsyncConnectionPool[Conn], catalogue: PricingCatalogue, now: datetime
) -> DemoSummary:
    """Create (or find) the demo wallet and post its history; returns what was added."""
    clock = FrozenClock(now - timedelta(days=30))
    ledger, batches = Ledger(pool, clock), BatchWriter(pool, clock)
    wallets = Wallets(pool)
    await wallets.create(DEMO_WALLET, owner_type="community", owner_id="acme-builders")
    for member, role in DEMO_MEMBERS:
        await wallets.add_member(DEMO_WALLET, member, role=role)

    await _buy(ledger, "pay_demo_0001", 100_000, "priya")  # ₹1,000 pack at the start
    rng = random.Random(2026)
    for day in range(30):
        clock.instant = now - timedelta(days=30 - day, hours=-9)
        if day == 12:  # a UPI payment that failed, then a retry that went through
            await _fail(ledger, "pay_demo_0002", 50_000, "arjun")
            await _buy(ledger, "pay_demo_0003", 50_000, "arjun")
        if day == 20:
            await _ai_hold(ledger, catalogue)
            await ledger.adjust(
                DEMO_WALLET,
                "adj_demo_earnings",
                1_200,
                actor="ops@commdesk",
                reason="community_earnings",
                note="event ticket revenue share",
            )
            await ledger.hold_payout(DEMO_WALLET, "po_demo_0001", 500, member_id="priya")
            await ledger.complete_payout(DEMO_WALLET, "po_demo_0001")
        await batches.post_usage(_day_of_usage(rng, catalogue, day))
    # Every demo feature costs at least one credit, so reversing one is always within bounds.
    await ledger.reverse_usage(
        DEMO_WALLET, "rev_demo_0001", "demo-d25-0000", 1, reason="request failed upstream"
    )
    wallet = await wallets.get(DEMO_WALLET)
    return DemoSummary(DEMO_WALLET, tuple(m for m, _ in DEMO_MEMBERS), wallet.head_seq)


def _day_of_usage(rng: random.Random, catalogue: PricingCatalogue, day: int) -> list[UsageCharge]:
    features = [f for f, _ in DAILY_MIX]
    weights = [w for _, w in DAILY_MIX]
    volume = 60 + 4 * day + rng.randrange(30)  # a growing community
    charges = []
    for index in range(volume):
        feature = rng.choices(features, weights)[0]
        charges.append(
            UsageCharge(
                event_id=f"demo-d{day:02d}-{index:04d}",
                wallet_id=DEMO_WALLET,
                credits=catalogue.price(feature),
                feature=feature,
                member_id=rng.choice(DEMO_MEMBERS)[0],
                pricing_version=catalogue.version,
            )
        )
    return charges


async def _buy(ledger: Ledger, payment_id: str, amount_paise: int, member: str) -> None:
    quote = quote_add_funds(amount_paise)
    meta = {
        "amount_paise": quote.amount_paise,
        "gst_paise": quote.gst_paise,
        "platform_fee_paise": quote.platform_fee_paise,
        "total_paise": quote.total_paise,
    }
    await ledger.purchase_pending(
        DEMO_WALLET, payment_id, quote.base_credits, member_id=member, metadata=meta
    )
    await ledger.purchase_confirm(DEMO_WALLET, payment_id, bonus_credits=quote.bonus_credits)


async def _fail(ledger: Ledger, payment_id: str, amount_paise: int, member: str) -> None:
    quote = quote_add_funds(amount_paise)
    await ledger.purchase_pending(DEMO_WALLET, payment_id, quote.base_credits, member_id=member)
    await ledger.purchase_fail(DEMO_WALLET, payment_id)


async def _ai_hold(ledger: Ledger, catalogue: PricingCatalogue) -> None:
    """An AI assistant reply priced by tokens: reserve an estimate, capture the actual."""
    reserved = catalogue.reserve_estimate("ai.assistant_reply", 1_200, 2_000)
    actual = catalogue.capture_credits("ai.assistant_reply", 2_100, reserved)
    await ledger.hold_usage(
        DEMO_WALLET, "hold_demo_0001", reserved, feature="ai.assistant_reply", member_id="zoya"
    )
    await ledger.capture_hold(DEMO_WALLET, "hold_demo_0001", actual)
