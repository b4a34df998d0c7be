"""Load the contract's example payloads from ``meter/examples/`` (reusable by any consumer's tests).

Layout: ``meter/examples/<topic>/valid/<name>.json`` decode successfully;
``meter/examples/<topic>/invalid/<reason>--<name>.json`` must fail with that
:class:`meter.schema.SchemaReason`. Files are raw message bytes, so malformed ones exist too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import meter
from meter.schema import SchemaReason

EXAMPLES_DIR: Final = Path(meter.__file__).parent / "examples"


@dataclass(frozen=True, slots=True)
class Example:
    topic: str
    name: str
    raw: bytes
    expected_reason: SchemaReason | None  # None: the payload is valid

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.name}"


def _load(path: Path) -> Example:
    topic, kind = path.parent.parent.name, path.parent.name
    if kind == "valid":
        return Example(topic, path.stem, path.read_bytes(), None)
    assert kind == "invalid", f"unexpected example folder {path.parent}"
    reason, sep, _ = path.stem.partition("--")
    assert sep, f"invalid example {path.name} must be named <reason>--<name>.json"
    return Example(topic, path.stem, path.read_bytes(), SchemaReason(reason))


def all_examples() -> tuple[Example, ...]:
    """Every example of every topic, sorted by topic then name."""
    return tuple(_load(p) for p in sorted(EXAMPLES_DIR.glob("*/*/*.json")))


def valid_examples(topic: str) -> tuple[Example, ...]:
    """The valid payloads of one topic (e.g. to feed a consumer under test)."""
    return tuple(e for e in all_examples() if e.topic == topic and e.expected_reason is None)


def invalid_examples(topic: str) -> tuple[Example, ...]:
    """The invalid payloads of one topic, each with the reason it must be refused for."""
    return tuple(e for e in all_examples() if e.topic == topic and e.expected_reason is not None)
