"""The pricing catalogue (SPEC §4): credits per operation, versioned, loaded from pricing.toml.

Each operation has a stable feature key (``"ai.summary"``), a category, a tier (premium features
pause when a wallet runs out of credits, core ones keep working), an infrastructure cost estimate
used by the margin model (``domain.margins``) and the daily-cap class it counts against (SPEC §5).
AI operations may also carry a per-1,000-token rate: the engine reserves an estimate first, then
captures the actual price, never more than it reserved.

``parse_catalogue`` is pure and refuses anything doubtful with a :class:`ConfigError` naming the
entry and the field; ``load_catalogue`` is the one function here that reads a file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from domain.errors import ConfigError, InvalidInput, UnknownFeature
from domain.money import require_int

DEFAULT_PRICING_PATH = Path(__file__).parent / "config" / "pricing.toml"
TOKENS_PER_RATE_UNIT = 1_000

_FEATURE_KEY = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
_E = TypeVar("_E", bound=StrEnum)


class Category(StrEnum):
    COMMUNITY = "community"
    API = "api"
    QUEUE = "queue"
    WEBHOOKS = "webhooks"
    STORAGE = "storage"
    AI = "ai"


class Tier(StrEnum):
    """CORE keeps working when credits run out (SPEC §5 graceful exhaustion); PREMIUM pauses."""

    CORE = "core"
    PREMIUM = "premium"


class CapClass(StrEnum):
    """The daily cap (SPEC §5) an operation counts against; the limits live in caps.toml."""

    AI = "ai"
    WEBHOOKS = "webhooks"
    EMAILS = "emails"


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """Names one entry of a config file in error messages and validates its raw fields.

    ``label`` reads like ``"pricing.toml: operation 'ai.summary'"``; every failure becomes
    ``"<label>: field '<field>' <problem>"`` so the operator knows what to fix and where.
    """

    label: str

    def fail(self, field_name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.label}: field {field_name!r} {problem}", field=field_name)

    def table(self, raw: object, field_name: str) -> Mapping[str, object]:
        if not isinstance(raw, Mapping):
            raise self.fail(field_name, f"must be a table, got {raw!r}")
        return raw

    def only_fields(self, raw: Mapping[str, object], allowed: frozenset[str]) -> None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed))
            raise self.fail(unknown[0], f"is not a known field (known: {known})")

    def required(self, raw: Mapping[str, object], field_name: str) -> object:
        if field_name not in raw:
            raise self.fail(field_name, "is missing")
        return raw[field_name]

    def whole(self, raw: object, field_name: str, *, minimum: int = 0) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
            raise self.fail(field_name, f"must be a whole number >= {minimum}, got {raw!r}")
        return raw

    def text(self, raw: object, field_name: str) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise self.fail(field_name, f"must be a non-empty string, got {raw!r}")
        return raw

    def choice(self, raw: object, field_name: str, kind: type[_E]) -> _E:
        allowed = [member.value for member in kind]
        if raw not in allowed:
            raise self.fail(field_name, f"must be one of {', '.join(allowed)}; got {raw!r}")
        return kind(raw)


@dataclass(frozen=True, slots=True)
class Operation:
    """One billable operation. ``credits`` is the flat price per unit (0 means free)."""

    key: str
    category: Category
    name: str
    credits: int
    tier: Tier
    infra_cost_paise: int
    cap_class: CapClass | None = None
    credits_per_1k_tokens: int | None = None

    def __post_init__(self) -> None:
        entry = ConfigEntry(f"operation {self.key!r}")
        if not _FEATURE_KEY.fullmatch(self.key):
            raise entry.fail("key", "must look like 'category.operation' (lowercase, a-z0-9_)")
        if self.key.split(".")[0] != self.category.value:
            raise entry.fail("key", f"must start with its category '{self.category.value}.'")
        entry.text(self.name, "name")
        entry.whole(self.credits, "credits")
        entry.whole(self.infra_cost_paise, "infra_cost_paise")
        if self.credits_per_1k_tokens is not None:
            entry.whole(self.credits_per_1k_tokens, "credits_per_1k_tokens", minimum=1)
            if self.category is not Category.AI:
                raise entry.fail("credits_per_1k_tokens", "is only allowed for ai operations")

    @property
    def token_priced(self) -> bool:
        return self.credits_per_1k_tokens is not None


@dataclass(frozen=True, slots=True)
class PricingCatalogue:
    """One pricing version. Every deduction records ``version`` (SPEC §4)."""

    version: int
    effective_from: date
    operations: tuple[Operation, ...]
    _by_key: Mapping[str, Operation] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entry = ConfigEntry("pricing catalogue")
        entry.whole(self.version, "version", minimum=1)
        if not self.operations:
            raise entry.fail("operation", "must list at least one operation")
        by_key: dict[str, Operation] = {}
        for operation in self.operations:
            if operation.key in by_key:
                raise ConfigEntry(f"operation {operation.key!r}").fail("key", "is a duplicate")
            by_key[operation.key] = operation
        object.__setattr__(self, "_by_key", MappingProxyType(by_key))

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(operation.key for operation in self.operations)

    def operation(self, feature: str) -> Operation:
        """The operation for ``feature``; raises :class:`UnknownFeature` when there is none."""
        found = self._by_key.get(feature)
        if found is None:
            raise UnknownFeature(
                f"unknown feature {feature!r} in pricing version {self.version}",
                feature=feature,
                pricing_version=self.version,
            )
        return found

    def price(self, feature: str, quantity: object = 1) -> int:
        """Credits for ``quantity`` (a whole number >= 1) units of ``feature`` at the flat rate."""
        units = require_int(quantity, field="quantity", minimum=1)
        return self.operation(feature).credits * units

    def price_tokens(self, feature: str, tokens: object) -> int:
        """Credits for ``tokens`` at the feature's per-1k-token rate, rounded UP to a credit.

        Rounding up so that no token is ever served for free. Raises :class:`InvalidInput` when
        the feature has no token rate.
        """
        count = require_int(tokens, field="tokens", minimum=1)
        rate = self._token_rate(feature)
        return -(-count * rate // TOKENS_PER_RATE_UNIT)

    def reserve_estimate(
        self, feature: str, prompt_tokens: object, max_output_tokens: object
    ) -> int:
        """Credits to reserve before a token-priced call: the price of the largest possible call.

        The prompt is known and the output is bounded by ``max_output_tokens``, so the capture
        can never need more than this reservation.
        """
        prompt = require_int(prompt_tokens, field="prompt_tokens", minimum=0)
        output = require_int(max_output_tokens, field="max_output_tokens", minimum=1)
        return self.price_tokens(feature, prompt + output)

    def capture_credits(self, feature: str, actual_tokens: object, reserved_credits: object) -> int:
        """Credits to capture after the call: the actual price, never more than was reserved."""
        reserved = require_int(reserved_credits, field="reserved_credits", minimum=0)
        return min(self.price_tokens(feature, actual_tokens), reserved)

    def _token_rate(self, feature: str) -> int:
        rate = self.operation(feature).credits_per_1k_tokens
        if rate is None:
            raise InvalidInput(f"feature {feature!r} is not priced per token", feature=feature)
        return rate


_TOP_FIELDS = frozenset({"version", "effective_from", "operation"})
_OPERATION_FIELDS = frozenset(
    {
        "key",
        "category",
        "name",
        "credits",
        "tier",
        "infra_cost_paise",
        "cap_class",
        "credits_per_1k_tokens",
    }
)


def parse_catalogue(raw: Mapping[str, object], source: str = "pricing.toml") -> PricingCatalogue:
    """Build a catalogue from parsed TOML (or any mapping). Pure.

    Raises :class:`ConfigError` whose message names the file, the entry and the field, e.g.
    ``pricing.toml: operation 'ai.summary': field 'credits' must be a whole number >= 0, got 1.5``.
    """
    top = ConfigEntry(source)
    top.only_fields(raw, _TOP_FIELDS)
    version = top.whole(top.required(raw, "version"), "version", minimum=1)
    effective_from = _parse_date(top, top.required(raw, "effective_from"))
    entries = top.required(raw, "operation")
    if not isinstance(entries, list) or not entries:
        raise top.fail("operation", "must be a non-empty array of [[operation]] tables")
    operations: list[Operation] = []
    seen: dict[str, int] = {}
    for index, entry_raw in enumerate(entries, start=1):
        operation = _parse_operation(source, index, entry_raw)
        if operation.key in seen:
            raise ConfigEntry(f"{source}: operation {operation.key!r}").fail(
                "key", f"is a duplicate (entries #{seen[operation.key]} and #{index})"
            )
        seen[operation.key] = index
        operations.append(operation)
    return PricingCatalogue(
        version=version, effective_from=effective_from, operations=tuple(operations)
    )


def _parse_operation(source: str, index: int, raw: object) -> Operation:
    entry = ConfigEntry(f"{source}: operation #{index}")
    table = entry.table(raw, "operation")
    key = entry.text(entry.required(table, "key"), "key")
    # From here on the entry is named by its key, which is what the operator searches for.
    entry = ConfigEntry(f"{source}: operation {key!r}")
    entry.only_fields(table, _OPERATION_FIELDS)
    category = entry.choice(entry.required(table, "category"), "category", Category)
    name = entry.text(entry.required(table, "name"), "name")
    credits = entry.whole(entry.required(table, "credits"), "credits")
    tier = entry.choice(entry.required(table, "tier"), "tier", Tier)
    infra = entry.whole(entry.required(table, "infra_cost_paise"), "infra_cost_paise")
    cap_raw = table.get("cap_class")
    cap_class = None if cap_raw is None else entry.choice(cap_raw, "cap_class", CapClass)
    rate_raw = table.get("credits_per_1k_tokens")
    rate = None if rate_raw is None else entry.whole(rate_raw, "credits_per_1k_tokens", minimum=1)
    try:
        return Operation(key, category, name, credits, tier, infra, cap_class, rate)
    except ConfigError as exc:
        # Cross-field checks in Operation name the entry but not the file: add the file.
        raise ConfigError(f"{source}: {exc.message}", **exc.details) from exc


def _parse_date(entry: ConfigEntry, raw: object) -> date:
    if isinstance(raw, date) and not isinstance(raw, datetime):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise entry.fail("effective_from", f"must be a date like 2026-01-01, got {raw!r}")


def load_catalogue(path: Path | None = None) -> PricingCatalogue:
    """Read and parse a pricing file (default: the checked-in ``domain/config/pricing.toml``)."""
    chosen = path or DEFAULT_PRICING_PATH
    return parse_catalogue(read_toml(chosen), source=chosen.name)


def read_toml(path: Path) -> dict[str, object]:
    """The one file read of the domain package: a TOML file, or a ConfigError naming it."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found", path=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}", path=str(path)) from exc
