"""Payments (SPEC §6): the state machine, payment methods and the retry rule. Pure, no I/O.

States and the only moves between them::

    idle ──▶ processing ──▶ pending ──▶ success ──▶ partially_refunded ──▶ refunded
                 │             │           └─────────────────────────────▲
                 └──▶ failed ◀─┘      (processing ──▶ success directly, too)

* ``idle``: the payment row exists, pending credits are posted, no gateway order yet.
* ``processing``: a gateway order exists and an attempt was submitted; outcome unknown.
* ``pending``: the gateway says the payer must still approve (a UPI collect request).
* ``success`` / ``failed``: the gateway's verdict. Both are final for the money coming in:
  a capture reported for a failed payment (or a failure for a captured one) is a conflict
  (:class:`StateConflict`), never a move, because the ledger already resolved the purchase.
* ``partially_refunded`` / ``refunded``: part or all of the amount went back to the payer.
  ``partially_refunded`` exists because a refund may be partial (SPEC §1 refund math), and a
  partially refunded payment can be refunded again until nothing is left.

Moves never go backwards (each state has a rank; a target of lower rank is refused). A move to
the current state is a no-op (every caller is at-least-once), except ``partially_refunded`` to
itself, which is a real move (one more partial refund).

Retry: a failed payment is retried by a **new payment** (its own id, gateway order and pending
ledger purchase) whose ``retry_of`` names the failed one. The failed payment keeps its history
(the ledger resolved its purchase as failed, and a gateway order is single-use once failed in
our books). A failed payment has at most one retry: asking again returns that retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from domain.errors import InvalidInput, StateConflict


class PaymentState(StrEnum):
    IDLE = "idle"
    PROCESSING = "processing"
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class PaymentPurpose(StrEnum):
    ADD_FUNDS = "add_funds"
    AUTO_RECHARGE = "auto_recharge"


class MethodKind(StrEnum):
    UPI = "upi"
    CARD = "card"
    NETBANKING = "netbanking"
    WALLET = "wallet"
    SAVED_TOKEN = "saved_token"  # noqa: S105 - a method name


S = PaymentState
RANK: dict[PaymentState, int] = {
    S.IDLE: 0,
    S.PROCESSING: 1,
    S.PENDING: 2,
    S.SUCCESS: 3,
    S.FAILED: 3,
    S.PARTIALLY_REFUNDED: 4,
    S.REFUNDED: 5,
}

ALLOWED: dict[PaymentState, frozenset[PaymentState]] = {
    S.IDLE: frozenset({S.PROCESSING, S.FAILED}),
    S.PROCESSING: frozenset({S.PENDING, S.SUCCESS, S.FAILED}),
    S.PENDING: frozenset({S.SUCCESS, S.FAILED}),
    S.SUCCESS: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.FAILED: frozenset(),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.REFUNDED: frozenset(),
}

FINAL = frozenset({S.FAILED, S.REFUNDED})
PAID = frozenset({S.SUCCESS, S.PARTIALLY_REFUNDED, S.REFUNDED})


class Move(StrEnum):
    """What applying a target state to a payment does."""

    ADVANCE = "advance"  # a real forward move: record it and run its effects
    SAME = "same"  # already there: a duplicate, nothing to do
    BEHIND = "behind"  # the payment is already past it (an out-of-order report): nothing to do


def classify(current: PaymentState, target: PaymentState) -> Move:
    """Decide a reported ``target`` against ``current``.

    Raises :class:`StateConflict` for a move that is neither forward, a duplicate nor stale,
    e.g. ``failed -> success`` or ``success -> failed``: contradicting verdicts.
    """
    if target in ALLOWED[current]:
        return Move.ADVANCE
    if target is current:
        return Move.SAME
    if RANK[target] < RANK[current] and not _contradicts(current, target):
        return Move.BEHIND
    raise StateConflict(
        f"payment cannot move from {current.value} to {target.value}",
        current=current.value,
        target=target.value,
    )


def _contradicts(current: PaymentState, target: PaymentState) -> bool:
    """A success-side state and ``failed`` never follow one another, in either order."""
    return (current in PAID and target is S.FAILED) or (current is S.FAILED and target in PAID)


def transition(current: PaymentState, target: PaymentState) -> PaymentState:
    """The strict form: return ``target`` if it is an allowed forward move, else StateConflict."""
    if target not in ALLOWED[current]:
        raise StateConflict(
            f"payment cannot move from {current.value} to {target.value}",
            current=current.value,
            target=target.value,
        )
    return target


def state_after_refund(amount_paise: int, refunded_paise_after: int) -> PaymentState:
    """``refunded`` once the whole amount went back, else ``partially_refunded``."""
    assert 0 < refunded_paise_after <= amount_paise
    return S.REFUNDED if refunded_paise_after == amount_paise else S.PARTIALLY_REFUNDED


def require_retryable(state: PaymentState) -> None:
    """Only a failed payment can be retried (a new payment linked by ``retry_of``)."""
    if state is not S.FAILED:
        raise StateConflict(
            f"only a failed payment can be retried; this one is {state.value}", state=state.value
        )


def parse_state(value: object) -> PaymentState:
    try:
        return PaymentState(str(value))
    except ValueError:
        raise InvalidInput(f"unknown payment state {value!r}", field="state") from None


# --- payment methods ---------------------------------------------------------------------------

_VPA = re.compile(r"^[A-Za-z0-9.\-_]{1,256}@[A-Za-z][A-Za-z0-9]{1,64}$")
_CODE = re.compile(r"^[A-Za-z0-9_]{2,32}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_]{4,64}$")


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    """How the payer pays. Exactly the field its kind needs is set (checked on construction).

    A card number lives only in memory, for the gateway call (the sandbox decides on it);
    it is never stored or logged: :attr:`detail` is what the database keeps (last four digits).
    """

    kind: MethodKind
    vpa: str | None = None
    card_number: str | None = None
    card_token: str | None = None
    bank: str | None = None
    wallet: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        given = {
            name
            for name in ("vpa", "card_number", "card_token", "bank", "wallet", "token")
            if getattr(self, name) is not None
        }
        needed = _NEEDS[self.kind]
        if len(given) != 1 or not given <= needed:
            raise InvalidInput(
                f"method {self.kind.value} takes exactly one of {sorted(needed)}",
                field="method",
            )
        _validate_detail(self)

    @property
    def detail(self) -> str:
        """A non-secret description to store: VPA, masked card, bank, wallet or token id."""
        if self.card_number is not None:
            return f"card_xxxx{self.card_number[-4:]}"
        value = self.vpa or self.card_token or self.bank or self.wallet or self.token
        assert value is not None
        return value

    @classmethod
    def upi(cls, vpa: str) -> PaymentMethod:
        return cls(MethodKind.UPI, vpa=vpa)

    @classmethod
    def card(cls, number: str) -> PaymentMethod:
        return cls(MethodKind.CARD, card_number=number.replace(" ", ""))

    @classmethod
    def saved_token(cls, token: str) -> PaymentMethod:
        return cls(MethodKind.SAVED_TOKEN, token=token)


_NEEDS: dict[MethodKind, frozenset[str]] = {
    MethodKind.UPI: frozenset({"vpa"}),
    MethodKind.CARD: frozenset({"card_number", "card_token"}),
    MethodKind.NETBANKING: frozenset({"bank"}),
    MethodKind.WALLET: frozenset({"wallet"}),
    MethodKind.SAVED_TOKEN: frozenset({"token"}),
}


def _validate_detail(method: PaymentMethod) -> None:
    if method.vpa is not None and not _VPA.fullmatch(method.vpa):
        raise InvalidInput("vpa must look like name@bank", field="vpa")
    if method.card_number is not None and not luhn_valid(method.card_number):
        raise InvalidInput("card number is not a valid card number", field="card_number")
    for name in ("bank", "wallet"):
        value = getattr(method, name)
        if value is not None and not _CODE.fullmatch(value):
            raise InvalidInput(f"{name} must be a 2-32 character code", field=name)
    for name in ("card_token", "token"):
        value = getattr(method, name)
        if value is not None and not _TOKEN.fullmatch(value):
            raise InvalidInput(f"{name} must be 4-64 characters of [A-Za-z0-9_]", field=name)


def luhn_valid(number: str) -> bool:
    """12-19 digits passing the Luhn checksum (what every card network uses)."""
    if not number.isascii() or not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
