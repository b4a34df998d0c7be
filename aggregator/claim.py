"""A request's idempotency claim, taken by the authorisation script itself.

The consume API guards each ``Idempotency-Key`` with a Redis record (:mod:`api.idempotency`):
the request that creates it (``SET NX``) executes, every other one waits for its answer. For
consume, the claim is taken *inside* ``authorize.lua``, atomically with the decision it guards,
instead of in a round trip of its own before it: one Redis round trip per consume instead of
two, and no window between claim and decision.

The record key must live in the wallet's hash slot (a cluster runs a script only on keys of one
slot): :class:`~api.idempotency.IdempotencyStore` tags it with the wallet id, like every key of
:class:`~aggregator.redis_keys.WalletKeys`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RequestClaim:
    """What the script sets (``SET key record NX PX ttl_ms``) before deciding, and whether it did.

    ``taken`` is set by whoever took the claim; it stays ``False`` when the request was answered
    before reaching the script (an invalid body), when the wallet was not loaded (the script
    claims nothing; the caller loads the wallet and asks again), or when the script gave the
    claim back with a transient refusal (``rate_limited``: a retry must run anew).
    """

    key: str
    record: str
    ttl_ms: int
    taken: bool = False


class ClaimHeld(Exception):
    """The key's record already exists: another request with this key ran or is running, and
    its record (not this request) answers. Never reaches a client: the idempotency store turns
    it into the replay, the conflict or the wait."""
