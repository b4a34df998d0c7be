"""The pricing catalogue: every SPEC §4 row, token pricing, and named refusals of bad files."""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import ConfigError, InvalidAmount, InvalidInput, UnknownFeature
from domain.pricing import (
    DEFAULT_PRICING_PATH,
    CapClass,
    Category,
    Operation,
    PricingCatalogue,
    Tier,
    load_catalogue,
    parse_catalogue,
)

SPEC_PRICES = {
    "community.create_community": 0,
    "community.invite_member": 1,
    "community.update_branding": 3,
    "community.upload_banner": 8,
    "community.team_role_update": 1,
    "api.basic_request": 1,
    "api.heavy_query": 5,
    "api.export_data": 20,
    "api.analytics_query": 10,
    "queue.email_send": 1,
    "queue.push_notification": 1,
    "queue.retry_queue": 2,
    "queue.scheduled_job": 2,
    "webhooks.trigger": 1,
    "webhooks.retry_attempt": 1,
    "webhooks.premium_delivery": 3,
    "storage.mb100_month": 5,
    "storage.gb_month": 40,
    "storage.media_optimization": 3,
    "ai.summary": 15,
    "ai.moderation": 5,
    "ai.search": 12,
    "ai.assistant_reply": 8,
}
PREMIUM = {
    "api.heavy_query",
    "api.export_data",
    "api.analytics_query",
    "webhooks.premium_delivery",
    "ai.summary",
    "ai.moderation",
    "ai.search",
    "ai.assistant_reply",
}


CHECKED_IN = load_catalogue()


@pytest.fixture(scope="module")
def catalogue() -> PricingCatalogue:
    return CHECKED_IN


def raw_file() -> dict[str, Any]:
    with DEFAULT_PRICING_PATH.open("rb") as handle:
        return tomllib.load(handle)


def entry(raw: dict[str, Any], key: str) -> dict[str, Any]:
    found: dict[str, Any] = next(op for op in raw["operation"] if op["key"] == key)
    return found


def test_checked_in_file_has_every_spec_row(catalogue: PricingCatalogue) -> None:
    assert len(catalogue.operations) == 23
    assert {op.key: op.credits for op in catalogue.operations} == SPEC_PRICES
    assert catalogue.version == 1
    assert catalogue.effective_from == date(2026, 1, 1)


def test_categories_tiers_and_cap_classes(catalogue: PricingCatalogue) -> None:
    for op in catalogue.operations:
        assert op.category == Category(op.key.split(".")[0])
        assert (op.tier is Tier.PREMIUM) == (op.key in PREMIUM), op.key
        assert op.infra_cost_paise >= 0
    caps = {op.key: op.cap_class for op in catalogue.operations if op.cap_class is not None}
    assert caps == {
        "queue.email_send": CapClass.EMAILS,
        "webhooks.trigger": CapClass.WEBHOOKS,
        "webhooks.retry_attempt": CapClass.WEBHOOKS,
        "webhooks.premium_delivery": CapClass.WEBHOOKS,
        "ai.summary": CapClass.AI,
        "ai.moderation": CapClass.AI,
        "ai.search": CapClass.AI,
        "ai.assistant_reply": CapClass.AI,
    }


def test_price_multiplies_by_quantity(catalogue: PricingCatalogue) -> None:
    assert catalogue.price("ai.summary") == 15
    assert catalogue.price("ai.summary", 3) == 45
    assert catalogue.price("community.create_community", 10) == 0
    assert catalogue.price("storage.gb_month", 2) == 80


@pytest.mark.parametrize("quantity", [0, -1, 1.5, True, "2"])
def test_price_refuses_bad_quantities(catalogue: PricingCatalogue, quantity: object) -> None:
    with pytest.raises(InvalidAmount, match="quantity"):
        catalogue.price("api.basic_request", quantity)


def test_unknown_feature_is_a_typed_error(catalogue: PricingCatalogue) -> None:
    with pytest.raises(
        UnknownFeature, match=re.escape("unknown feature 'ai.poetry' in pricing version 1")
    ):
        catalogue.price("ai.poetry")


@pytest.mark.parametrize(
    ("tokens", "credits"), [(1, 1), (200, 1), (201, 2), (1_000, 5), (3_000, 15)]
)
def test_token_price_rounds_up_to_whole_credits(
    catalogue: PricingCatalogue, tokens: int, credits: int
) -> None:
    assert catalogue.price_tokens("ai.summary", tokens) == credits


def test_token_pricing_refusals(catalogue: PricingCatalogue) -> None:
    with pytest.raises(InvalidInput, match="not priced per token"):
        catalogue.price_tokens("ai.search", 1_000)
    with pytest.raises(InvalidAmount, match="tokens"):
        catalogue.price_tokens("ai.summary", 0)


def test_reserve_then_capture_never_exceeds_the_reservation(catalogue: PricingCatalogue) -> None:
    reserved = catalogue.reserve_estimate("ai.assistant_reply", 1_500, 500)
    assert reserved == 8
    assert catalogue.capture_credits("ai.assistant_reply", 100, reserved) == 1
    assert catalogue.capture_credits("ai.assistant_reply", 5_000, reserved) == reserved


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=50_000), st.integers(min_value=1, max_value=50_000))
def test_token_pricing_properties(prompt: int, max_output: int) -> None:
    catalogue = CHECKED_IN
    reserved = catalogue.reserve_estimate("ai.summary", prompt, max_output)
    assert reserved * 1_000 >= (prompt + max_output) * 5 > (reserved - 1) * 1_000
    for actual in {1, max(1, prompt), prompt + max_output}:
        assert catalogue.capture_credits("ai.summary", actual, reserved) <= reserved
        assert catalogue.price_tokens("ai.summary", actual) <= reserved


Mutation = Callable[[dict[str, Any]], None]


def set_field(key: str, name: str, value: object) -> Mutation:
    return lambda raw: entry(raw, key).__setitem__(name, value)


def drop_field(key: str, name: str) -> Mutation:
    return lambda raw: entry(raw, key).pop(name)


def duplicate(key: str) -> Mutation:
    return lambda raw: raw["operation"].append(copy.deepcopy(entry(raw, key)))


BAD_FILES: list[tuple[str, Mutation, str]] = [
    (
        "fractional credits",
        set_field("ai.summary", "credits", 1.5),
        "pricing.toml: operation 'ai.summary': field 'credits' must be a whole number >= 0, "
        "got 1.5",
    ),
    (
        "negative credits",
        set_field("api.basic_request", "credits", -1),
        "operation 'api.basic_request': field 'credits' must be a whole number >= 0, got -1",
    ),
    (
        "boolean credits",
        set_field("api.basic_request", "credits", True),
        "operation 'api.basic_request': field 'credits' must be a whole number >= 0, got True",
    ),
    (
        "string infra cost",
        set_field("ai.search", "infra_cost_paise", "38"),
        "operation 'ai.search': field 'infra_cost_paise' must be a whole number >= 0, got '38'",
    ),
    (
        "missing tier",
        drop_field("queue.retry_queue", "tier"),
        "operation 'queue.retry_queue': field 'tier' is missing",
    ),
    (
        "unknown field",
        set_field("ai.search", "colour", "blue"),
        "operation 'ai.search': field 'colour' is not a known field",
    ),
    (
        "unknown category",
        set_field("api.heavy_query", "category", "video"),
        "operation 'api.heavy_query': field 'category' must be one of community, api",
    ),
    (
        "unknown tier",
        set_field("api.heavy_query", "tier", "gold"),
        "operation 'api.heavy_query': field 'tier' must be one of core, premium; got 'gold'",
    ),
    (
        "unknown cap class",
        set_field("queue.email_send", "cap_class", "sms"),
        "operation 'queue.email_send': field 'cap_class' must be one of ai, webhooks, emails",
    ),
    (
        "duplicate key",
        duplicate("ai.search"),
        "operation 'ai.search': field 'key' is a duplicate (entries #22 and #24)",
    ),
    (
        "token rate on a non-AI operation",
        set_field("api.export_data", "credits_per_1k_tokens", 3),
        "pricing.toml: operation 'api.export_data': field 'credits_per_1k_tokens' is only "
        "allowed for ai operations",
    ),
    (
        "zero token rate",
        set_field("ai.summary", "credits_per_1k_tokens", 0),
        "operation 'ai.summary': field 'credits_per_1k_tokens' must be a whole number >= 1",
    ),
    (
        "key outside its category",
        set_field("ai.search", "category", "api"),
        "operation 'ai.search': field 'key' must start with its category 'api.'",
    ),
    (
        "empty name",
        set_field("ai.search", "name", " "),
        "operation 'ai.search': field 'name' must be a non-empty string",
    ),
    (
        "missing key",
        lambda raw: raw["operation"][2].pop("key"),
        "pricing.toml: operation #3: field 'key' is missing",
    ),
    (
        "malformed key",
        set_field("ai.search", "key", "AI Search"),
        "operation 'AI Search': field 'key' must look like 'category.operation'",
    ),
    (
        "version zero",
        lambda raw: raw.__setitem__("version", 0),
        "pricing.toml: field 'version' must be a whole number >= 1, got 0",
    ),
    (
        "missing version",
        lambda raw: raw.pop("version"),
        "pricing.toml: field 'version' is missing",
    ),
    (
        "bad date",
        lambda raw: raw.__setitem__("effective_from", "tomorrow"),
        "pricing.toml: field 'effective_from' must be a date like 2026-01-01, got 'tomorrow'",
    ),
    (
        "unknown top-level field",
        lambda raw: raw.__setitem__("currency", "INR"),
        "pricing.toml: field 'currency' is not a known field",
    ),
    (
        "no operations",
        lambda raw: raw.__setitem__("operation", []),
        "pricing.toml: field 'operation' must be a non-empty array",
    ),
    (
        "operation not a table",
        lambda raw: raw["operation"].append("ai.summary"),
        "pricing.toml: operation #24: field 'operation' must be a table",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_catalogues_name_entry_and_field(mutate: Mutation, message: str) -> None:
    raw = raw_file()
    mutate(raw)
    with pytest.raises(ConfigError) as caught:
        parse_catalogue(raw)
    assert message in caught.value.message
    assert caught.value.code == "invalid_config"


def test_effective_from_accepts_an_iso_string() -> None:
    raw = raw_file()
    raw["effective_from"] = "2026-04-01"
    assert parse_catalogue(raw).effective_from == date(2026, 4, 1)


def test_bad_file_on_disk_is_named(tmp_path: Path) -> None:
    text = DEFAULT_PRICING_PATH.read_text().replace("credits = 15\n", "credits = 1.5\n", 1)
    path = tmp_path / "pricing-v2.toml"
    path.write_text(text)
    with pytest.raises(
        ConfigError, match=r"pricing-v2\.toml: operation 'ai\.summary': field 'credits'"
    ):
        load_catalogue(path)


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "pricing.toml"
    broken.write_text("version = 1\nversion = 2\n")
    with pytest.raises(ConfigError, match=re.escape("pricing.toml: not valid TOML")):
        load_catalogue(broken)
    with pytest.raises(ConfigError, match="file not found"):
        load_catalogue(tmp_path / "absent.toml")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=re.escape("operation 'ai.x': field 'credits'")):
        Operation("ai.x", Category.AI, "X", -1, Tier.PREMIUM, 0)
    op = Operation("ai.x", Category.AI, "X", 1, Tier.PREMIUM, 0)
    with pytest.raises(
        ConfigError, match=re.escape("operation 'ai.x': field 'key' is a duplicate")
    ):
        PricingCatalogue(1, date(2026, 1, 1), (op, op))
    with pytest.raises(ConfigError, match="field 'operation' must list at least one"):
        PricingCatalogue(1, date(2026, 1, 1), ())
