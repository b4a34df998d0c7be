"""The margin model (SPEC §9): the checked-in prices keep every workload inside the band."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from domain.margins import (
    DEFAULT_MARGIN_ASSUMPTIONS,
    DEFAULT_SCENARIOS,
    MarginAssumptions,
    PackBasis,
    Scenario,
    check_margins,
    format_bp,
    pack_revenue,
    ratio_bp,
    revenue_rate,
)
from domain.packs import LARGEST_PACK, PACKS, RechargePack
from domain.pricing import Category, Operation, PricingCatalogue, Tier, load_catalogue
from domain.quote import quote_add_funds

REQUIRED_SCENARIOS = {"balanced", "ai_heavy", "webhook_heavy", "large_community", "export_heavy"}


@pytest.fixture(scope="module")
def catalogue() -> PricingCatalogue:
    return load_catalogue()


def repriced(catalogue: PricingCatalogue, **credits: int) -> PricingCatalogue:
    """The catalogue with some prices changed: ``repriced(c, **{"ai.summary": 1})``."""
    operations = tuple(
        replace(op, credits=credits[op.key]) if op.key in credits else op
        for op in catalogue.operations
    )
    return PricingCatalogue(catalogue.version + 1, date(2026, 6, 1), operations)


def test_checked_in_catalogue_is_inside_the_band(catalogue: PricingCatalogue) -> None:
    report = check_margins(catalogue)
    assert report.violations == ()
    assert report.ok
    assert {s.scenario for s in report.scenarios} >= REQUIRED_SCENARIOS
    assert len(report.scenarios) == 2 * len(DEFAULT_SCENARIOS)
    for result in report.scenarios:
        assert 2_500 <= result.infra_bp <= 4_500, result
        assert 3_500 <= result.gross_margin_bp <= 5_000, result
        assert result.gross_margin_paise == (
            result.net_revenue_paise - result.infra_cost_paise - result.cost_of_service_paise
        )


def test_worst_pack_is_the_largest_bonus_pack() -> None:
    rate = revenue_rate(PackBasis.WORST_PACK, DEFAULT_MARGIN_ASSUMPTIONS)
    # ₹2,500 + ₹60 fee - ₹60.20 gateway fee (2% of ₹3,010) over 32,000 credits: ~₹0.078/credit.
    assert (rate.net_revenue_paise, rate.gateway_fees_paise, rate.credits) == (
        249_980,
        6_020,
        32_000,
    )
    assert rate.paise_per_1000_credits == 7_812
    assert rate.credits == LARGEST_PACK.credits_added


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: str(p.amount_paise))
def test_net_revenue_excludes_gst_and_gateway_fees(pack: RechargePack) -> None:
    quote = quote_add_funds(pack.amount_paise)
    rate = pack_revenue(pack, DEFAULT_MARGIN_ASSUMPTIONS)
    gateway = (quote.total_paise * 200 + 5_000) // 10_000
    assert rate.gateway_fees_paise == gateway
    assert rate.net_revenue_paise == quote.amount_paise + quote.platform_fee_paise - gateway


def test_bonus_dilution_orders_the_packs() -> None:
    per_1000 = [pack_revenue(p, DEFAULT_MARGIN_ASSUMPTIONS).paise_per_1000_credits for p in PACKS]
    assert per_1000 == sorted(per_1000, reverse=True)
    mix = revenue_rate(PackBasis.PACK_MIX, DEFAULT_MARGIN_ASSUMPTIONS).paise_per_1000_credits
    assert per_1000[-1] < mix < per_1000[0]


def test_ai_summary_at_one_credit_fails(catalogue: PricingCatalogue) -> None:
    report = check_margins(repriced(catalogue, **{"ai.summary": 1}))
    assert not report.ok
    assert any(v.startswith("ai.summary (worst_pack): sells below") for v in report.violations)
    assert any(v.startswith("ai_heavy (pack_mix): infra cost is") for v in report.violations)


def test_tripled_prices_fail_the_upper_bound(catalogue: PricingCatalogue) -> None:
    report = check_margins(
        repriced(catalogue, **{op.key: op.credits * 3 for op in catalogue.operations})
    )
    assert not report.ok
    assert any("gross margin is" in v and "outside 35.00%-50.00%" in v for v in report.violations)
    assert any("infra cost is" in v and "outside 25.00%-45.00%" in v for v in report.violations)


def test_an_operation_in_no_scenario_is_reported(catalogue: PricingCatalogue) -> None:
    extra = Operation("ai.translate", Category.AI, "AI translate", 10, Tier.PREMIUM, 30)
    bigger = PricingCatalogue(2, date(2026, 6, 1), (*catalogue.operations, extra))
    report = check_margins(bigger)
    assert report.violations == (
        "ai.translate: not exercised by any scenario, so no price change to it can be checked",
    )


def test_a_scenario_with_an_unknown_feature_is_reported(catalogue: PricingCatalogue) -> None:
    ghost = Scenario(
        "ghost", "uses a removed feature", (("api.basic_request", 10), ("ai.poetry", 1))
    )
    report = check_margins(catalogue, scenarios=(*DEFAULT_SCENARIOS, ghost))
    assert report.violations == ("ghost: uses 'ai.poetry', which the catalogue lacks",)
    assert "ghost" not in {s.scenario for s in report.scenarios}


def test_cost_of_service_is_what_makes_both_targets_meetable(catalogue: PricingCatalogue) -> None:
    # Without it gross margin = 100% - infra share, above 50% whenever infra is under 50%.
    report = check_margins(catalogue, MarginAssumptions(cost_of_service_bp=0))
    assert not report.ok
    assert all("gross margin is" in v for v in report.violations)


def test_per_operation_figures(catalogue: PricingCatalogue) -> None:
    report = check_margins(catalogue)
    worst = {m.feature: m for m in report.operations if m.basis is PackBasis.WORST_PACK}
    assert len(worst) == 23
    free = worst["community.create_community"]
    assert free.infra_bp is None
    assert free.contribution_paise_per_1000_ops == -20_000
    summary = worst["ai.summary"]
    # 15,000 credits at 249,980 paise per 32,000 credits = 117,178.125 paise.
    assert summary.revenue_paise_per_1000_ops == 117_178
    assert summary.infra_cost_paise_per_1000_ops == 48_000
    for margin in worst.values():
        assert margin.credits == 0 or margin.contribution_paise_per_1000_ops > 0


@pytest.mark.parametrize(
    ("part", "whole", "bp", "text"),
    [
        (1, 3, 3_333, "33.33%"),
        (2, 3, 6_667, "66.67%"),
        (-1, 8, -1_250, "-12.50%"),
        (0, 5, 0, "0.00%"),
    ],
)
def test_ratio_and_format(part: int, whole: int, bp: int, text: str) -> None:
    assert ratio_bp(part, whole) == bp
    assert format_bp(bp) == text
