"""The margin model (SPEC §9): does a pricing catalogue keep every workload inside the band?

Definitions (all integer paise; ratios in basis points of net revenue):

- **Net revenue** of a purchase = amount + platform fee - gateway fee. GST is collected for the
  government and passed through, so it is not revenue; the gateway fee (default 2% of the total
  charged, GST included) is what the payment gateway keeps.
- **Net revenue per credit** = net revenue / credits added (bonus included). Bonus credits
  dilute it: a ₹2,500 pack adds 32,000 credits, so a credit earns only about 7.8 paise there
  against 10 paise on the ₹150 pack.
- **Infra cost** = sum of ``infra_cost_paise`` of the operations a workload runs.
- **Cost of service** = the rest of the cost of revenue (support, fraud and chargeback losses,
  monitoring and on-call, third-party tooling), a configurable share of net revenue. Without it
  the two targets of SPEC §9 contradict each other: a gross margin of 100% minus the infra share
  could never be inside 35-50% while infra is inside 25-45%. At the default 20%, gross margin =
  80% - infra share, so the margin band is met exactly when infra is 30-45% of net revenue.
- **Gross margin** = net revenue - infra cost - cost of service.

Each scenario (a month of one wallet's operations) is evaluated twice: on an assumed pack mix
and on the worst pack (every credit bought on the pack with the lowest net revenue per credit,
the ₹2,500 pack). :func:`check_margins` reports a violation when any evaluation leaves the band,
when a priced operation sells below its infra cost, or when an operation is in no scenario (a
price change to it could then never be caught).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from domain.errors import UnknownFeature
from domain.money import BASIS_POINTS, basis_points_of, div_round_half_up, require_int
from domain.packs import PACKS, RechargePack
from domain.pricing import PricingCatalogue
from domain.quote import DEFAULT_FEE_SCHEDULE, FeeSchedule, quote_add_funds


class PackBasis(StrEnum):
    PACK_MIX = "pack_mix"
    WORST_PACK = "worst_pack"


@dataclass(frozen=True, slots=True)
class MarginBand:
    """SPEC §9 targets, in basis points of net revenue (inclusive bounds)."""

    infra_min_bp: int = 2_500
    infra_max_bp: int = 4_500
    margin_min_bp: int = 3_500
    margin_max_bp: int = 5_000

    def __post_init__(self) -> None:
        require_int(self.infra_max_bp, field="infra_max_bp", minimum=self.infra_min_bp)
        require_int(self.margin_max_bp, field="margin_max_bp", minimum=self.margin_min_bp)


@dataclass(frozen=True, slots=True)
class PackShare:
    """How many purchases of every ``purchases`` total land on the pack at ``amount_paise``."""

    amount_paise: int
    purchases: int

    def __post_init__(self) -> None:
        require_int(self.purchases, field="purchases", minimum=1)
        assert any(p.amount_paise == self.amount_paise for p in PACKS), "pack mix names no pack"


# Assumed purchase mix (per 100 purchases): most top-ups are small; few buy the largest pack.
DEFAULT_PACK_MIX: tuple[PackShare, ...] = (
    PackShare(amount_paise=15_000, purchases=30),
    PackShare(amount_paise=30_000, purchases=25),
    PackShare(amount_paise=50_000, purchases=25),
    PackShare(amount_paise=100_000, purchases=15),
    PackShare(amount_paise=250_000, purchases=5),
)
DEFAULT_BAND = MarginBand()


@dataclass(frozen=True, slots=True)
class MarginAssumptions:
    fee_schedule: FeeSchedule = DEFAULT_FEE_SCHEDULE
    gateway_fee_bp: int = 200
    cost_of_service_bp: int = 2_000
    pack_mix: tuple[PackShare, ...] = DEFAULT_PACK_MIX
    band: MarginBand = DEFAULT_BAND

    def __post_init__(self) -> None:
        require_int(self.gateway_fee_bp, field="gateway_fee_bp", maximum=BASIS_POINTS)
        require_int(self.cost_of_service_bp, field="cost_of_service_bp", maximum=BASIS_POINTS)
        assert self.pack_mix, "the pack mix needs at least one pack"


DEFAULT_MARGIN_ASSUMPTIONS = MarginAssumptions()


@dataclass(frozen=True, slots=True)
class RevenueRate:
    """Net revenue (and the gateway fees already taken out of it) over the credits it bought."""

    basis: PackBasis
    net_revenue_paise: int
    gateway_fees_paise: int
    credits: int

    def net_revenue_for(self, credits: int) -> int:
        return div_round_half_up(credits * self.net_revenue_paise, self.credits)

    def gateway_fees_for(self, credits: int) -> int:
        return div_round_half_up(credits * self.gateway_fees_paise, self.credits)

    @property
    def paise_per_1000_credits(self) -> int:
        return self.net_revenue_for(1_000)


def pack_revenue(
    pack: RechargePack, assumptions: MarginAssumptions, purchases: int = 1
) -> RevenueRate:
    """What ``purchases`` purchases of ``pack`` earn, net of GST and gateway fees."""
    quote = quote_add_funds(pack.amount_paise, assumptions.fee_schedule)
    gateway = basis_points_of(quote.total_paise, assumptions.gateway_fee_bp)
    net = quote.amount_paise + quote.platform_fee_paise - gateway
    return RevenueRate(
        basis=PackBasis.PACK_MIX,
        net_revenue_paise=net * purchases,
        gateway_fees_paise=gateway * purchases,
        credits=quote.credits_added * purchases,
    )


def revenue_rate(basis: PackBasis, assumptions: MarginAssumptions) -> RevenueRate:
    """Net revenue per credit for the assumed pack mix, or for the worst pack."""
    if basis is PackBasis.WORST_PACK:
        rates = [pack_revenue(pack, assumptions) for pack in PACKS]
        # Lowest net revenue per credit; Fraction only compares exact ratios here.
        worst = min(rates, key=lambda r: Fraction(r.net_revenue_paise, r.credits))
        return RevenueRate(basis, worst.net_revenue_paise, worst.gateway_fees_paise, worst.credits)
    by_amount = {pack.amount_paise: pack for pack in PACKS}
    parts = [
        pack_revenue(by_amount[share.amount_paise], assumptions, share.purchases)
        for share in assumptions.pack_mix
    ]
    return RevenueRate(
        basis=basis,
        net_revenue_paise=sum(part.net_revenue_paise for part in parts),
        gateway_fees_paise=sum(part.gateway_fees_paise for part in parts),
        credits=sum(part.credits for part in parts),
    )


@dataclass(frozen=True, slots=True)
class Scenario:
    """A month of one wallet's operations: ``workload`` pairs a feature key with a count."""

    name: str
    description: str
    workload: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        assert self.workload, "a scenario needs operations"
        for feature, count in self.workload:
            require_int(count, field=f"{self.name}.{feature}", minimum=1)


DEFAULT_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "balanced",
        "a mid-size community using a bit of everything (every operation appears)",
        (
            ("community.create_community", 1),
            ("community.invite_member", 300),
            ("community.update_branding", 4),
            ("community.upload_banner", 3),
            ("community.team_role_update", 40),
            ("api.basic_request", 20_000),
            ("api.heavy_query", 300),
            ("api.export_data", 10),
            ("api.analytics_query", 100),
            ("queue.email_send", 3_000),
            ("queue.push_notification", 5_000),
            ("queue.retry_queue", 200),
            ("queue.scheduled_job", 600),
            ("webhooks.trigger", 4_000),
            ("webhooks.retry_attempt", 400),
            ("webhooks.premium_delivery", 200),
            ("storage.mb100_month", 20),
            ("storage.gb_month", 5),
            ("storage.media_optimization", 150),
            ("ai.summary", 150),
            ("ai.moderation", 1_000),
            ("ai.search", 300),
            ("ai.assistant_reply", 400),
        ),
    ),
    Scenario(
        "ai_heavy",
        "an AI-first community close to the 200/day AI cap every day",
        (
            ("ai.summary", 1_200),
            ("ai.moderation", 2_000),
            ("ai.search", 1_000),
            ("ai.assistant_reply", 1_500),
            ("api.basic_request", 5_000),
            ("queue.email_send", 500),
        ),
    ),
    Scenario(
        "webhook_heavy",
        "an integration hub near the 10,000/day webhook cap, with retries",
        (
            ("webhooks.trigger", 200_000),
            ("webhooks.retry_attempt", 50_000),
            ("webhooks.premium_delivery", 30_000),
            ("api.basic_request", 20_000),
            ("queue.retry_queue", 2_000),
            ("queue.scheduled_job", 2_000),
        ),
    ),
    Scenario(
        "large_community",
        "tens of thousands of members: invites, notifications, email, storage, moderation",
        (
            ("community.create_community", 1),
            ("community.invite_member", 5_000),
            ("community.team_role_update", 1_000),
            ("community.update_branding", 10),
            ("community.upload_banner", 10),
            ("queue.email_send", 100_000),
            ("queue.push_notification", 200_000),
            ("queue.scheduled_job", 3_000),
            ("api.basic_request", 100_000),
            ("storage.mb100_month", 50),
            ("storage.gb_month", 50),
            ("storage.media_optimization", 2_000),
            ("ai.moderation", 3_000),
        ),
    ),
    Scenario(
        "export_heavy",
        "finance and analytics users pulling exports and heavy queries",
        (
            ("api.export_data", 3_000),
            ("api.analytics_query", 5_000),
            ("api.heavy_query", 10_000),
            ("api.basic_request", 20_000),
            ("queue.scheduled_job", 3_000),
            ("storage.gb_month", 20),
            ("queue.email_send", 1_000),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class OperationMargin:
    """One operation's economics per 1,000 operations (integer paise keep precision there).

    ``infra_bp`` is infra cost over net revenue; ``None`` for a free operation.
    """

    feature: str
    basis: PackBasis
    credits: int
    revenue_paise_per_1000_ops: int
    infra_cost_paise_per_1000_ops: int
    contribution_paise_per_1000_ops: int
    infra_bp: int | None


@dataclass(frozen=True, slots=True)
class ScenarioMargin:
    """One scenario on one pack basis; ratios are basis points of ``net_revenue_paise``."""

    scenario: str
    basis: PackBasis
    credits_consumed: int
    net_revenue_paise: int
    gateway_fees_paise: int
    infra_cost_paise: int
    cost_of_service_paise: int
    gross_margin_paise: int
    infra_bp: int
    gross_margin_bp: int


@dataclass(frozen=True, slots=True)
class MarginReport:
    operations: tuple[OperationMargin, ...]
    scenarios: tuple[ScenarioMargin, ...]
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def check_margins(
    catalogue: PricingCatalogue,
    assumptions: MarginAssumptions = DEFAULT_MARGIN_ASSUMPTIONS,
    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS,
) -> MarginReport:
    """Evaluate every operation and scenario on both pack bases and list what breaks the band.

    Pure. A pricing change that fails this check must not ship (the test suite runs it on the
    checked-in catalogue).
    """
    rates = [revenue_rate(basis, assumptions) for basis in PackBasis]
    operations = tuple(
        operation_margin(catalogue, feature, rate)
        for rate in rates
        for feature in catalogue.features
    )
    violations = [*_uncovered(catalogue, scenarios), *_unknown(catalogue, scenarios)]
    violations += [
        f"{m.feature} ({m.basis}): sells below its infra cost "
        f"({m.revenue_paise_per_1000_ops} paise of revenue vs {m.infra_cost_paise_per_1000_ops} "
        "paise of cost per 1,000 operations)"
        for m in operations
        if m.credits > 0 and m.contribution_paise_per_1000_ops < 0
    ]
    evaluated = tuple(
        scenario_margin(catalogue, scenario, rate, assumptions)
        for rate in rates
        for scenario in scenarios
        if not _unknown(catalogue, (scenario,))
    )
    for result in evaluated:
        violations += _band_violations(result, assumptions.band)
    return MarginReport(operations, evaluated, tuple(violations))


def operation_margin(
    catalogue: PricingCatalogue, feature: str, rate: RevenueRate
) -> OperationMargin:
    """Per-operation margin: credits x net revenue per credit - infra cost, per 1,000 ops."""
    operation = catalogue.operation(feature)
    revenue = rate.net_revenue_for(operation.credits * 1_000)
    infra = operation.infra_cost_paise * 1_000
    return OperationMargin(
        feature=feature,
        basis=rate.basis,
        credits=operation.credits,
        revenue_paise_per_1000_ops=revenue,
        infra_cost_paise_per_1000_ops=infra,
        contribution_paise_per_1000_ops=revenue - infra,
        infra_bp=ratio_bp(infra, revenue) if revenue else None,
    )


def scenario_margin(
    catalogue: PricingCatalogue,
    scenario: Scenario,
    rate: RevenueRate,
    assumptions: MarginAssumptions,
) -> ScenarioMargin:
    credits = sum(catalogue.price(feature, count) for feature, count in scenario.workload)
    infra = sum(catalogue.operation(f).infra_cost_paise * count for f, count in scenario.workload)
    revenue = rate.net_revenue_for(credits)
    service = basis_points_of(revenue, assumptions.cost_of_service_bp)
    margin = revenue - infra - service
    return ScenarioMargin(
        scenario=scenario.name,
        basis=rate.basis,
        credits_consumed=credits,
        net_revenue_paise=revenue,
        gateway_fees_paise=rate.gateway_fees_for(credits),
        infra_cost_paise=infra,
        cost_of_service_paise=service,
        gross_margin_paise=margin,
        infra_bp=ratio_bp(infra, revenue) if revenue else BASIS_POINTS,
        gross_margin_bp=ratio_bp(margin, revenue) if revenue else -BASIS_POINTS,
    )


def ratio_bp(part: int, whole: int) -> int:
    """``part / whole`` in basis points, rounded half away from zero (``part`` may be < 0)."""
    assert whole > 0, "a ratio needs a positive whole"
    magnitude = div_round_half_up(abs(part) * BASIS_POINTS, whole)
    return magnitude if part >= 0 else -magnitude


def format_bp(value_bp: int) -> str:
    """Basis points as a percentage: 3840 -> '38.40%'."""
    sign = "-" if value_bp < 0 else ""
    whole, fraction = divmod(abs(value_bp), 100)
    return f"{sign}{whole}.{fraction:02d}%"


def _band_violations(result: ScenarioMargin, band: MarginBand) -> list[str]:
    where = f"{result.scenario} ({result.basis})"
    found: list[str] = []
    if not band.infra_min_bp <= result.infra_bp <= band.infra_max_bp:
        found.append(
            f"{where}: infra cost is {format_bp(result.infra_bp)} of net revenue, outside "
            f"{format_bp(band.infra_min_bp)}-{format_bp(band.infra_max_bp)}"
        )
    if not band.margin_min_bp <= result.gross_margin_bp <= band.margin_max_bp:
        found.append(
            f"{where}: gross margin is {format_bp(result.gross_margin_bp)}, outside "
            f"{format_bp(band.margin_min_bp)}-{format_bp(band.margin_max_bp)}"
        )
    return found


def _uncovered(catalogue: PricingCatalogue, scenarios: tuple[Scenario, ...]) -> list[str]:
    used = {feature for scenario in scenarios for feature, _ in scenario.workload}
    return [
        f"{feature}: not exercised by any scenario, so no price change to it can be checked"
        for feature in catalogue.features
        if feature not in used
    ]


def _unknown(catalogue: PricingCatalogue, scenarios: tuple[Scenario, ...]) -> list[str]:
    found: list[str] = []
    for scenario in scenarios:
        for feature, _ in scenario.workload:
            try:
                catalogue.operation(feature)
            except UnknownFeature:
                found.append(f"{scenario.name}: uses {feature!r}, which the catalogue lacks")
    return found
