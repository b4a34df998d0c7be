"""Integer money: credits and paise, with their conversions and the one rounding rule.

Credits are whole numbers; rupee amounts are integer paise. No float and no Decimal touches money.
"""

from __future__ import annotations

from domain.errors import InvalidAmount

PAISE_PER_RUPEE = 100
CREDITS_PER_RUPEE = 10
PAISE_PER_CREDIT = PAISE_PER_RUPEE // CREDITS_PER_RUPEE  # 10 paise buy one credit
BASIS_POINTS = 10_000


def require_int(value: object, *, field: str, minimum: int = 0, maximum: int | None = None) -> int:
    """Return ``value`` if it is a true ``int`` within bounds; raise :class:`InvalidAmount` else.

    ``bool`` is refused (it is an ``int`` subclass) and so is every float, even ``5.0``: a
    fractional-looking credit must never be silently accepted.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(
            f"{field} must be a whole number, got {value!r}", field=field, value=repr(value)
        )
    if value < minimum:
        raise InvalidAmount(f"{field} must be >= {minimum}, got {value}", field=field, value=value)
    if maximum is not None and value > maximum:
        raise InvalidAmount(f"{field} must be <= {maximum}, got {value}", field=field, value=value)
    return value


def require_credits(value: object, *, field: str = "credits", positive: bool = True) -> int:
    """Validate a credit amount: a whole number, > 0 (or >= 0 with ``positive=False``)."""
    return require_int(value, field=field, minimum=1 if positive else 0)


def require_paise(value: object, *, field: str = "amount_paise", positive: bool = True) -> int:
    """Validate a paise amount: a whole number, > 0 (or >= 0 with ``positive=False``)."""
    return require_int(value, field=field, minimum=1 if positive else 0)


def div_round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half-up, for a non-negative numerator.

    The single rounding helper of the codebase (SPEC §1: paise, half-up).
    """
    assert denominator > 0, "denominator must be positive"
    assert numerator >= 0, "half-up rounding is defined here for non-negative amounts"
    return (2 * numerator + denominator) // (2 * denominator)


def basis_points_of(amount_paise: int, rate_bp: int) -> int:
    """``amount_paise * rate_bp / 10_000`` rounded half-up to the paisa (18% = 1800 bp)."""
    return div_round_half_up(amount_paise * rate_bp, BASIS_POINTS)


def rupees_to_paise(rupees: int) -> int:
    return require_int(rupees, field="amount_rupees") * PAISE_PER_RUPEE


def paise_to_credits(amount_paise: int) -> int:
    """Credits bought by ``amount_paise``; refuses a non-whole number of credits."""
    require_paise(amount_paise, positive=False)
    if amount_paise % PAISE_PER_CREDIT:
        raise InvalidAmount(
            f"{amount_paise} paise is not a whole number of credits "
            f"({PAISE_PER_CREDIT} paise per credit)",
            field="amount_paise",
        )
    return amount_paise // PAISE_PER_CREDIT


def format_inr(amount_paise: int) -> str:
    """Indian-grouped rupees: 20000000 paise -> '₹2,00,000'; 1250 -> '₹12.50'."""
    sign = "-" if amount_paise < 0 else ""
    rupees, paise = divmod(abs(amount_paise), PAISE_PER_RUPEE)
    digits = str(rupees)
    if len(digits) > 3:
        head, tail = digits[:-3], digits[-3:]
        groups: list[str] = []
        while len(head) > 2:
            groups.insert(0, head[-2:])
            head = head[:-2]
        if head:
            groups.insert(0, head)
        digits = ",".join([*groups, tail])
    return f"{sign}₹{digits}" + (f".{paise:02d}" if paise else "")
