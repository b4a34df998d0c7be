"""The usage-sink contract: every backend in conftest.BACKENDS must pass all of it."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from domain.errors import ConfigError, InvalidInput, Unavailable
from settlement.usage_sink import UsageRow, UsageStore
from tests.usage_sink import oracle
from tests.usage_sink.conftest import IST_MIDNIGHT, Backend, usage

pytestmark = pytest.mark.clickhouse

IST = ZoneInfo("Asia/Kolkata")
DIMENSIONS = ("feature", "category", "member", "day", "hour")
WIDE = (IST_MIDNIGHT - timedelta(days=3), IST_MIDNIGHT + timedelta(days=6))


def spread_rows(rng: random.Random, count: int, prefix: str = "e") -> list[UsageRow]:
    """Rows over ~3 IST days for two wallets, some exactly on day and hour boundaries."""
    base = IST_MIDNIGHT - timedelta(hours=7)
    boundaries = [IST_MIDNIGHT + timedelta(days=d, hours=h) for d in (0, 1) for h in (0, 5)]
    rows = []
    for i in range(count):
        if i < len(boundaries):
            at = boundaries[i]
        else:
            at = base + timedelta(
                seconds=rng.randrange(3 * 86400), microseconds=rng.randrange(10**6)
            )
        rows.append(
            usage(
                f"{prefix}{i}",
                at,
                wallet_id=rng.choice(("w1", "w2")),
                credits=rng.randrange(0, 500),
                quantity=rng.randrange(0, 5000),
                feature=rng.choice(("ai.summary", "ai.translate", "voice.minutes")),
                category=rng.choice(("ai", "voice")),
                member_id=rng.choice(("m1", "m2", None)),
            )
        )
    return rows


def snapshot(store: UsageStore, start: datetime, end: datetime) -> dict[str, object]:
    """Every query's answer for both wallets, to compare before and after a redelivery."""
    result: dict[str, object] = {"count": store.count_events()}
    for wallet in ("w1", "w2"):
        result[f"{wallet}.count"] = store.count_events(wallet)
        result[f"{wallet}.totals"] = store.totals(wallet, start, end)
        result[f"{wallet}.top"] = store.top_features(wallet, start, end, 2)
        first, last = start.astimezone(IST).date(), end.astimezone(IST).date()
        result[f"{wallet}.daily"] = store.daily_series(wallet, first, last)
        for by in DIMENSIONS:
            result[f"{wallet}.{by}"] = store.breakdown(wallet, start, end, by)  # type: ignore[arg-type]
    return result


def assert_matches_oracle(
    store: UsageStore, rows: list[UsageRow], start: datetime, end: datetime
) -> None:
    for wallet in ("w1", "w2"):
        assert store.totals(wallet, start, end) == oracle.totals(rows, wallet, start, end)
        for by in DIMENSIONS:
            expected = oracle.breakdown(rows, wallet, start, end, by, IST)
            assert store.breakdown(wallet, start, end, by) == expected, by  # type: ignore[arg-type]


# --- schema ----------------------------------------------------------------------------------


def test_ensure_schema_is_idempotent(store: UsageStore) -> None:
    store.ensure_schema()
    store.ensure_schema()
    assert store.insert([usage("e1", IST_MIDNIGHT)]) == 1
    assert store.count_events() == 1


def test_data_survives_reopening(backend: Backend) -> None:
    first = backend.open()
    first.insert([usage("e1", IST_MIDNIGHT, credits=7)])
    first.close()
    again = backend.open()
    assert again.totals("w1", *WIDE) == (7, 1)
    assert again.insert([usage("e1", IST_MIDNIGHT, credits=7)]) == 0


def test_reopening_with_another_day_timezone_is_refused(backend: Backend) -> None:
    backend.open().close()
    with pytest.raises(ConfigError, match="day_timezone=Asia/Kolkata"):
        backend.open(day_timezone="UTC")


# --- idempotency -----------------------------------------------------------------------------


def test_insert_reports_newly_stored_rows(store: UsageStore) -> None:
    rows = [usage(f"e{i}", IST_MIDNIGHT + timedelta(minutes=i)) for i in range(5)]
    assert store.insert(rows[:3]) == 3
    assert store.insert(rows) == 2
    assert store.insert(rows) == 0
    assert store.insert([]) == 0
    assert store.count_events() == 5


def test_same_rows_twice_change_no_query(store: UsageStore) -> None:
    rows = spread_rows(random.Random(1), 300)
    assert store.insert(rows) == 300
    before = snapshot(store, *WIDE)
    assert store.insert(rows) == 0
    assert store.insert(list(reversed(rows))) == 0
    assert snapshot(store, *WIDE) == before
    assert_matches_oracle(store, rows, *WIDE)


def test_overlapping_batches_store_each_event_once(store: UsageStore) -> None:
    rows = spread_rows(random.Random(2), 400)
    assert store.insert(rows[0:150]) == 150
    assert store.insert(rows[100:250]) == 100
    assert store.insert(rows[200:400]) == 150
    assert store.insert(rows[50:350:3]) == 0
    assert store.count_events() == 400
    assert_matches_oracle(store, rows, *WIDE)


def test_batch_regrouped_after_crash_is_not_double_counted(store: UsageStore) -> None:
    rng = random.Random(3)
    rows = spread_rows(rng, 500)
    for start in range(0, 300, 100):  # settled before the "crash"
        store.insert(rows[start : start + 100])
    redelivered = rows[150:500]  # the uncommitted tail, replayed in other groupings
    rng.shuffle(redelivered)
    stored = sum(store.insert(redelivered[i : i + 70]) for i in range(0, len(redelivered), 70))
    assert stored == 200
    assert store.count_events() == 500
    assert_matches_oracle(store, rows, *WIDE)
    first, last = WIDE[0].astimezone(IST).date(), WIDE[1].astimezone(IST).date()
    for wallet in ("w1", "w2"):
        assert store.daily_series(wallet, first, last) == oracle.daily(
            rows, wallet, first, last, IST
        )


def test_repeated_id_within_one_batch_counts_once_first_wins(store: UsageStore) -> None:
    first = usage("e1", IST_MIDNIGHT, credits=10)
    conflicting = usage("e1", IST_MIDNIGHT, credits=99)
    assert store.insert([first, conflicting, first]) == 1
    assert store.totals("w1", *WIDE) == (10, 1)


def test_redelivery_with_a_later_settled_at_is_ignored(store: UsageStore) -> None:
    row = usage("e1", IST_MIDNIGHT)
    store.insert([row])
    redelivered = usage("e1", IST_MIDNIGHT, settled_at=IST_MIDNIGHT + timedelta(hours=1))
    assert store.insert([redelivered, usage("e2", IST_MIDNIGHT)]) == 1
    assert store.totals("w1", *WIDE) == (20, 2)


def test_threads_sharing_a_store_store_each_event_once(store: UsageStore) -> None:
    rows = spread_rows(random.Random(9), 300)

    def deliver(seed: int) -> int:
        mine = rows[:]
        random.Random(seed).shuffle(mine)
        return sum(store.insert(mine[i : i + 40]) for i in range(0, len(mine), 40))

    with ThreadPoolExecutor(max_workers=4) as pool:
        stored = sum(pool.map(deliver, range(4)))
    assert stored == 300
    assert store.count_events() == 300
    assert_matches_oracle(store, rows, *WIDE)


def test_same_event_id_in_two_wallets_batch_is_deduplicated_per_batch(store: UsageStore) -> None:
    rows = [usage(f"e{i}", IST_MIDNIGHT, wallet_id=f"w{i % 2 + 1}") for i in range(10)]
    store.insert(rows[:6])
    assert store.insert(rows) == 4
    assert (store.count_events("w1"), store.count_events("w2")) == (5, 5)


def test_ids_with_quotes_backslashes_and_unicode_round_trip(store: UsageStore) -> None:
    odd_wallet, odd_event = "w'1\\x\\t ü", "e\\1'"
    row = usage(odd_event, IST_MIDNIGHT, wallet_id=odd_wallet, feature="f\\'", member_id="m\\")
    assert store.insert([row]) == 1
    assert store.insert([row]) == 0
    assert store.count_events(odd_wallet) == 1
    assert [r.key for r in store.breakdown(odd_wallet, *WIDE, by="feature")] == ["f\\'"]
    assert [r.key for r in store.breakdown(odd_wallet, *WIDE, by="member")] == ["m\\"]


def test_clickhouse_failures_are_retryable_unavailable(backend: Backend) -> None:
    store = backend.open(schema=False)  # no tables yet: every statement fails
    with pytest.raises(Unavailable) as caught:
        store.insert([usage("e1", IST_MIDNIGHT)])
    assert caught.value.retryable
    store.ensure_schema()
    assert store.insert([usage("e1", IST_MIDNIGHT)]) == 1


# --- queries -------------------------------------------------------------------------------------


def test_queries_are_exact_over_arbitrary_ranges(store: UsageStore) -> None:
    rng = random.Random(4)
    rows = spread_rows(rng, 400)
    store.insert(rows)
    instants = [
        *(IST_MIDNIGHT + timedelta(days=d, hours=h) for d in (-1, 0, 1, 2) for h in (0, 1, 13)),
        *(row.occurred_at for row in rng.sample(rows, 8)),
        *(IST_MIDNIGHT + timedelta(seconds=rng.randrange(-86400, 3 * 86400)) for _ in range(8)),
        IST_MIDNIGHT + timedelta(minutes=30),  # a UTC hour that is not a local hour
    ]
    for _ in range(25):
        start, end = sorted(rng.sample(instants, 2))
        assert_matches_oracle(store, rows, start, end)


def test_days_are_ist_calendar_days(store: UsageStore) -> None:
    just_before = IST_MIDNIGHT - timedelta(microseconds=1)
    store.insert([usage("late", just_before, credits=3), usage("early", IST_MIDNIGHT, credits=5)])
    days = store.breakdown("w1", *WIDE, by="day")
    assert [(row.key, row.credits) for row in days] == [
        (date(2024, 2, 29), 3),
        (date(2024, 3, 1), 5),
    ]
    assert store.daily_series("w1", date(2024, 2, 28), date(2024, 3, 2)) == [
        (date(2024, 2, 28), 0),
        (date(2024, 2, 29), 3),
        (date(2024, 3, 1), 5),
        (date(2024, 3, 2), 0),
    ]


def test_hours_start_at_local_hour_boundaries(store: UsageStore) -> None:
    store.insert([usage("e1", datetime(2024, 3, 1, 10, 10, tzinfo=UTC))])  # 15:40 IST
    (row,) = store.breakdown("w1", *WIDE, by="hour")
    assert row.key == datetime(2024, 3, 1, 9, 30, tzinfo=UTC)  # 15:00 IST


def test_a_utc_store_buckets_by_utc_days(backend: Backend) -> None:
    store = backend.open(day_timezone="UTC")
    store.insert([usage("e1", datetime(2024, 3, 1, 23, 0, tzinfo=UTC))])  # 2 March in IST
    assert store.daily_series("w1", date(2024, 3, 1), date(2024, 3, 1)) == [(date(2024, 3, 1), 10)]


def test_breakdown_orders_and_keys(store: UsageStore) -> None:
    store.insert(
        [
            usage("e1", IST_MIDNIGHT, feature="b", credits=5, member_id=None),
            usage("e2", IST_MIDNIGHT, feature="a", credits=5, member_id="m2"),
            usage("e3", IST_MIDNIGHT + timedelta(days=1), feature="c", credits=9, quantity=4),
            usage("e4", IST_MIDNIGHT + timedelta(hours=2), feature="c", credits=1, quantity=6),
        ]
    )
    features = store.breakdown("w1", *WIDE, by="feature")
    assert [(r.key, r.credits, r.events, r.quantity) for r in features] == [
        ("c", 10, 2, 10),
        ("a", 5, 1, 1),
        ("b", 5, 1, 1),
    ]
    assert [r.key for r in store.breakdown("w1", *WIDE, by="member")] == ["m1", None, "m2"]
    assert [r.key for r in store.breakdown("w1", *WIDE, by="day")] == [
        date(2024, 3, 1),
        date(2024, 3, 2),
    ]
    hours = [r.key for r in store.breakdown("w1", *WIDE, by="hour")]
    assert hours == [IST_MIDNIGHT + timedelta(hours=h) for h in (0, 2, 24)]
    assert [r.key for r in store.top_features("w1", *WIDE, limit=1)] == ["c"]


def test_daily_series_is_zero_filled_and_inclusive(store: UsageStore) -> None:
    store.insert([usage("e1", IST_MIDNIGHT + timedelta(days=2), credits=4)])
    series = store.daily_series("w1", date(2024, 3, 1), date(2024, 3, 5))
    assert [d.day for d in series] == [date(2024, 3, d) for d in range(1, 6)]
    assert [d.credits for d in series] == [0, 0, 4, 0, 0]
    assert store.daily_series("nobody", date(2024, 3, 1), date(2024, 3, 1)) == [
        (date(2024, 3, 1), 0)
    ]


def test_unknown_wallets_and_empty_ranges_are_zero(store: UsageStore) -> None:
    store.insert([usage("e1", IST_MIDNIGHT)])
    assert store.totals("nobody", *WIDE) == (0, 0)
    assert store.totals("w1", IST_MIDNIGHT, IST_MIDNIGHT) == (0, 0)
    assert store.breakdown("w1", IST_MIDNIGHT, IST_MIDNIGHT, "feature") == []
    assert store.breakdown("nobody", *WIDE, by="hour") == []
    assert store.count_events("nobody") == 0


def test_count_events_per_wallet(store: UsageStore) -> None:
    store.insert([usage(f"e{i}", IST_MIDNIGHT, wallet_id=f"w{i % 3}") for i in range(10)])
    assert [store.count_events(f"w{i}") for i in range(3)] == [4, 3, 3]
    assert store.count_events() == 10


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("totals", ("w1", datetime(2024, 3, 1), datetime(2024, 3, 2, tzinfo=UTC))),
        ("totals", ("w1", WIDE[1], WIDE[0])),
        ("totals", ("", *WIDE)),
        ("breakdown", ("w1", *WIDE, "week")),
        ("top_features", ("w1", *WIDE, 0)),
        ("daily_series", ("w1", date(2024, 3, 2), date(2024, 3, 1))),
        ("daily_series", ("w1", WIDE[0], date(2024, 3, 1))),
        ("reconcile_rollups", (date(2024, 3, 2), date(2024, 3, 1))),
        ("count_events", ("",)),
    ],
)
def test_bad_query_arguments_are_invalid_input(
    store: UsageStore, method: str, args: tuple[object, ...]
) -> None:
    with pytest.raises(InvalidInput):
        getattr(store, method)(*args)


# --- rollup reconciliation -------------------------------------------------------------------


def test_reconcile_on_a_healthy_store_appends_nothing(store: UsageStore) -> None:
    rows = spread_rows(random.Random(5), 200)
    store.insert(rows)
    assert store.reconcile_rollups(date(2024, 2, 1), date(2024, 3, 31)) == 0
    assert_matches_oracle(store, rows, *WIDE)


def lose_view_inserts(store: UsageStore, rows: list[UsageRow]) -> None:
    """Simulate the crash window in which events are stored but their view inserts are lost."""
    store._execute("DROP VIEW usage_hourly_mv")
    store._execute("DROP VIEW usage_daily_mv")
    store.insert(rows)
    store.ensure_schema()  # recreates the views


def test_redelivery_repairs_rollups_a_crash_left_behind(store: UsageStore) -> None:
    rows = spread_rows(random.Random(6), 200)
    store.insert(rows[:100])
    lose_view_inserts(store, rows[100:])
    assert store.totals("w1", *WIDE) != oracle.totals(rows, "w1", *WIDE)
    assert store.insert(rows[100:]) == 0  # the redelivery notices and repairs
    assert_matches_oracle(store, rows, *WIDE)
    assert store.reconcile_rollups(date(2024, 2, 1), date(2024, 3, 31)) == 0


def test_reconcile_rollups_repairs_lost_view_inserts(store: UsageStore) -> None:
    rows = spread_rows(random.Random(7), 200)
    store.insert(rows[:100])
    lose_view_inserts(store, rows[100:])
    assert store.reconcile_rollups(date(2024, 2, 1), date(2024, 3, 31)) > 0
    assert_matches_oracle(store, rows, *WIDE)
    assert store.reconcile_rollups(date(2024, 2, 1), date(2024, 3, 31)) == 0


def test_reconcile_removes_rollup_rows_without_events(store: UsageStore) -> None:
    rows = spread_rows(random.Random(8), 100)
    store.insert(rows)
    # Simulate the opposite crash window: the views' rows committed, the event's did not.
    ghost = usage("ghost", IST_MIDNIGHT + timedelta(hours=3), credits=50)
    store.insert([ghost])
    store._execute(
        "ALTER TABLE usage_events DELETE WHERE event_id = 'ghost' SETTINGS mutations_sync = 2"
    )
    assert store.count_events() == 100
    assert store.totals("w1", *WIDE) != oracle.totals(rows, "w1", *WIDE)
    assert store.reconcile_rollups(date(2024, 3, 1), date(2024, 3, 1), "w1") == 2  # hour, day
    assert_matches_oracle(store, rows, *WIDE)
