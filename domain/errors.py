"""The one exception tree of CommDesk Credits.

Expected failures are typed errors with a stable ``code`` (the API maps codes to HTTP statuses);
bugs are assertions. Back-pressure (retryable) is distinct from invalid input (never retryable).
"""

from __future__ import annotations

from typing import ClassVar


class CreditsError(Exception):
    """Root of every expected failure. ``code`` is stable and machine-readable."""

    code: ClassVar[str] = "credits_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(CreditsError):
    """The caller sent something malformed; retrying the same input can never succeed."""

    code = "invalid_request"


class InvalidAmount(InvalidInput):
    """A money or credit amount is fractional, negative, out of range or of the wrong type."""

    code = "invalid_amount"


class SignatureInvalid(InvalidInput):
    """A payment or webhook signature is missing, forged, replayed or stale; nothing was done.

    ``details["reason"]`` says which (``missing_signature``, ``bad_signature``, ``stale``,
    ``replay``, ``malformed``).
    """

    code = "invalid_signature"


class ConfigError(InvalidInput):
    """A checked-in configuration file is invalid. The message names the entry and the field."""

    code = "invalid_config"


class NotFound(CreditsError):
    """The named wallet, feature, payment or transaction does not exist (or is not visible)."""

    code = "not_found"


class UnknownFeature(NotFound):
    code = "unknown_feature"


class UnknownWallet(NotFound):
    code = "unknown_wallet"


class HoldNotFound(NotFound):
    """No hold with this id on this wallet."""

    code = "hold_not_found"


class InsufficientCredits(CreditsError):
    """The operation would take a balance below zero; nothing was changed."""

    code = "insufficient_credits"


class IdempotencyConflict(CreditsError):
    """The same idempotency key (source, source_id) was reused with a different request."""

    code = "idempotency_conflict"


class StateConflict(CreditsError):
    """The operation is not allowed in the current state (e.g. a purchase already resolved)."""

    code = "state_conflict"


class HoldExpired(StateConflict):
    """The hold expired (its credits went back to available) before it was captured."""

    code = "hold_expired"


class HoldAlreadyResolved(StateConflict):
    """The hold was already captured or released."""

    code = "hold_already_resolved"


class CapExceeded(CreditsError):
    """A daily cap would be exceeded; nothing was charged."""

    code = "daily_cap_reached"


class RateLimited(CreditsError):
    """A rate limit was hit; retry after the advertised delay."""

    code = "rate_limited"
    retryable = True


class Unavailable(CreditsError):
    """A dependency is unavailable; the operation had no effect and may be retried."""

    code = "unavailable"
    retryable = True


class Unauthenticated(CreditsError):
    """No credentials, or credentials that match no live key (never says which)."""

    code = "unauthenticated"


class Forbidden(CreditsError):
    """The credentials are valid but lack the scope or member role the operation needs."""

    code = "forbidden"


class IdempotencyInProgress(CreditsError):
    """A request with this idempotency key is still executing; retry the same request later."""

    code = "idempotency_in_progress"
    retryable = True


class PremiumPaused(CreditsError):
    """Premium features of the wallet are paused (credits exhausted or under review)."""

    code = "premium_paused"


class WalletFrozen(CreditsError):
    """The wallet is frozen; nothing may be spent from it until an operator reinstates it."""

    code = "wallet_frozen"
