"""Redis key layout of the wallet mirror, and validation of the ids that go into keys.

Every per-wallet key carries the hash tag ``{wallet_id}``, so in Redis Cluster a wallet's keys
share one slot and each Lua script touches a single shard. Keys are computed here and passed
to scripts in ``KEYS``; scripts never build key names (cluster-correct, and greppable here).

=====================================  =======  ==============================================
key                                    type     contents
=====================================  =======  ==============================================
``P:{w}:wallet``                       hash     loaded, available, in_flight, held, status,
                                                loaded_version, applied_version
``P:{w}:inflight``                     hash     event_id -> credits authorised, not settled
``P:{w}:ev:<event_id>``                hash     the decision of an event (idempotency), TTL
``P:{w}:cap:<class>:<day_key>``        string   units admitted that day for the cap class, TTL
``P:{w}:rl:w:<scope>``                 string   GCRA arrival time of the wallet's limit, TTL
``P:{w}:rl:m:<scope>:<member_id>``     string   GCRA arrival time of a member's limit, TTL
``P:{w}:holds``                        hash     hold_id -> credits (active holds)
``P:{w}:hold_exp``                     zset     hold_id -> expires_at_ms (active holds)
``P:{w}:hold:<hold_id>``               hash     the hold's exactly-once record, TTL
``P:{w}:credit:<id>``                  string   a mirrored ledger credit (idempotency), TTL
``P:{w}:unused``                       -        placeholder for an absent cap/limit; never
                                                written
``P:{hold-index-<n>}``                 zset     ``{w}hold_id`` -> expires_at_ms: the one
                                                cross-slot structure (sweeper's index)
=====================================  =======  ==============================================
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from domain.errors import InvalidInput

MAX_ID_LENGTH = 200
_ID = re.compile(r"[^\s\x00-\x1f\x7f]+")
_TOKEN = re.compile(r"[0-9A-Za-z_-]{1,32}")


def require_id(value: object, *, field: str) -> str:
    """A non-empty id of at most 200 characters, without whitespace or control characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string", field=field)
    if len(value) > MAX_ID_LENGTH or not _ID.fullmatch(value):
        raise InvalidInput(
            f"{field} must be at most {MAX_ID_LENGTH} printable characters without spaces",
            field=field,
        )
    return value


def require_wallet_id(value: object) -> str:
    """An id that also refuses ``{`` and ``}``: a brace would move the cluster hash tag."""
    wallet_id = require_id(value, field="wallet_id")
    if "{" in wallet_id or "}" in wallet_id:
        raise InvalidInput("wallet_id must not contain braces", field="wallet_id")
    return wallet_id


def require_token(value: object, *, field: str) -> str:
    """A short key component (scope names, day keys): ``[0-9A-Za-z_-]{1,32}``."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidInput(f"{field} must match [0-9A-Za-z_-]{{1,32}}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class WalletKeys:
    """The fixed keys of one wallet (all in the wallet's slot)."""

    wallet_id: str
    base: str

    @property
    def wallet(self) -> str:
        return f"{self.base}:wallet"

    @property
    def in_flight(self) -> str:
        return f"{self.base}:inflight"

    @property
    def holds(self) -> str:
        return f"{self.base}:holds"

    @property
    def hold_exp(self) -> str:
        return f"{self.base}:hold_exp"

    @property
    def unused(self) -> str:
        return f"{self.base}:unused"

    def event(self, event_id: str) -> str:
        return f"{self.base}:ev:{event_id}"

    def cap(self, cap_class: str, day_key: str) -> str:
        return f"{self.base}:cap:{cap_class}:{day_key}"

    def wallet_rate(self, scope: str) -> str:
        return f"{self.base}:rl:w:{scope}"

    def member_rate(self, scope: str, member_id: str) -> str:
        return f"{self.base}:rl:m:{scope}:{member_id}"

    def hold(self, hold_id: str) -> str:
        return f"{self.base}:hold:{hold_id}"

    def credit(self, idempotency_id: str) -> str:
        return f"{self.base}:credit:{idempotency_id}"


@dataclass(frozen=True, slots=True)
class KeySpace:
    """All keys under one prefix; tests use a prefix per test, production one per deployment.

    ``hold_index_shards`` spreads the sweeper's global index over that many keys (each its own
    slot) so one shard does not take every hold's index write in a large cluster.
    """

    prefix: str = "cdc"
    hold_index_shards: int = 1

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.prefix):
            raise InvalidInput("key prefix must match [0-9A-Za-z_-]{1,32}", field="prefix")
        if not 1 <= self.hold_index_shards <= 1024:
            raise InvalidInput("hold_index_shards must be 1..1024", field="hold_index_shards")

    def wallet(self, wallet_id: str) -> WalletKeys:
        require_wallet_id(wallet_id)
        return WalletKeys(wallet_id, f"{self.prefix}:{{{wallet_id}}}")

    def hold_index(self, wallet_id: str) -> str:
        """The sweeper index shard that lists this wallet's holds."""
        shard = zlib.crc32(wallet_id.encode()) % self.hold_index_shards
        return self.hold_index_shard(shard)

    def hold_index_shard(self, shard: int) -> str:
        return f"{self.prefix}:{{hold-index-{shard}}}"

    def hold_index_keys(self) -> tuple[str, ...]:
        return tuple(self.hold_index_shard(n) for n in range(self.hold_index_shards))

    def all_keys_pattern(self) -> str:
        """A SCAN pattern matching every key of this key space (tests, tooling)."""
        return f"{self.prefix}:*"


def hold_index_member(wallet_id: str, hold_id: str) -> str:
    """``{wallet_id}hold_id``: unambiguous because wallet ids cannot contain braces."""
    return f"{{{wallet_id}}}{hold_id}"


def parse_hold_index_member(member: str) -> tuple[str, str]:
    """Inverse of :func:`hold_index_member`."""
    assert member.startswith("{"), f"not a hold index member: {member!r}"
    wallet_id, _, hold_id = member[1:].partition("}")
    return wallet_id, hold_id
