"""The payment state machine never moves backwards; methods validate; retry rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidInput, StateConflict
from domain.payments import (
    ALLOWED,
    RANK,
    MethodKind,
    Move,
    PaymentMethod,
    PaymentState,
    classify,
    luhn_valid,
    require_retryable,
    state_after_refund,
    transition,
)

S = PaymentState


@pytest.mark.parametrize(
    ("path"),
    [
        (S.IDLE, S.PROCESSING, S.SUCCESS),
        (S.IDLE, S.PROCESSING, S.PENDING, S.SUCCESS, S.PARTIALLY_REFUNDED, S.REFUNDED),
        (S.IDLE, S.PROCESSING, S.PENDING, S.FAILED),
        (S.IDLE, S.PROCESSING, S.FAILED),
        (S.IDLE, S.FAILED),
        (S.IDLE, S.PROCESSING, S.SUCCESS, S.REFUNDED),
    ],
)
def test_the_documented_paths_are_allowed(path: tuple[PaymentState, ...]) -> None:
    state = path[0]
    for target in path[1:]:
        state = transition(state, target)
    assert state is path[-1]


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.SUCCESS, S.PENDING),
        (S.SUCCESS, S.PROCESSING),
        (S.REFUNDED, S.SUCCESS),
        (S.PENDING, S.PROCESSING),
        (S.FAILED, S.PROCESSING),
        (S.PROCESSING, S.IDLE),
    ],
)
def test_backward_moves_are_refused_strictly_and_stale_when_classified(
    current: PaymentState, target: PaymentState
) -> None:
    with pytest.raises(StateConflict):
        transition(current, target)
    assert classify(current, target) is Move.BEHIND


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.FAILED, S.SUCCESS),
        (S.SUCCESS, S.FAILED),
        (S.REFUNDED, S.FAILED),
        (S.FAILED, S.REFUNDED),
        (S.IDLE, S.SUCCESS),
        (S.PENDING, S.REFUNDED),
    ],
)
def test_contradictions_and_skips_are_conflicts(
    current: PaymentState, target: PaymentState
) -> None:
    with pytest.raises(StateConflict) as caught:
        classify(current, target)
    assert caught.value.code == "state_conflict"


def test_duplicates_are_no_ops_except_another_partial_refund() -> None:
    for state in S:
        expected = Move.ADVANCE if state is S.PARTIALLY_REFUNDED else Move.SAME
        assert classify(state, state) is expected


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_any_sequence_of_reports_never_moves_backwards(reports: list[PaymentState]) -> None:
    state = S.IDLE
    seen = [state]
    for target in reports:
        try:
            move = classify(state, target)
        except StateConflict:
            continue
        if move is Move.ADVANCE:
            assert RANK[target] >= RANK[state]
            state = target
        seen.append(state)
    assert [RANK[s] for s in seen] == sorted(RANK[s] for s in seen)
    # Once failed, nothing on the success side is ever reached, and vice versa.
    assert not (S.FAILED in seen and any(s in seen for s in (S.SUCCESS, S.REFUNDED)))


@given(st.sampled_from(list(S)), st.sampled_from(list(S)))
def test_every_allowed_move_goes_forward(current: PaymentState, target: PaymentState) -> None:
    if target in ALLOWED[current]:
        assert RANK[target] >= RANK[current]
        assert transition(current, target) is target


def test_refund_state_depends_on_the_amount_left() -> None:
    assert state_after_refund(50_000, 10_000) is S.PARTIALLY_REFUNDED
    assert state_after_refund(50_000, 50_000) is S.REFUNDED


def test_only_failed_payments_are_retryable() -> None:
    require_retryable(S.FAILED)
    for state in S:
        if state is not S.FAILED:
            with pytest.raises(StateConflict):
                require_retryable(state)


def test_methods_validate_and_store_no_card_number() -> None:
    card = PaymentMethod.card("4111 1111 1111 1111")
    assert card.kind is MethodKind.CARD
    assert card.detail == "card_xxxx1111"
    assert PaymentMethod.upi("success@razorpay").detail == "success@razorpay"
    assert PaymentMethod.saved_token("tok_sandbox_ok").detail == "tok_sandbox_ok"
    assert PaymentMethod(MethodKind.NETBANKING, bank="HDFC").detail == "HDFC"
    assert PaymentMethod(MethodKind.WALLET, wallet="paytm").detail == "paytm"


@pytest.mark.parametrize(
    "build",
    [
        lambda: PaymentMethod.card("4111 1111 1111 1112"),
        lambda: PaymentMethod.upi("not-a-vpa"),
        lambda: PaymentMethod(MethodKind.UPI),
        lambda: PaymentMethod(MethodKind.UPI, vpa="a@okhdfc", bank="HDFC"),
        lambda: PaymentMethod(MethodKind.CARD, vpa="a@okhdfc"),
        lambda: PaymentMethod(MethodKind.NETBANKING, bank="x"),
        lambda: PaymentMethod.saved_token("bad token"),
    ],
)
def test_bad_methods_raise_invalid_input(build: object) -> None:
    with pytest.raises(InvalidInput):
        build()  # type: ignore[operator]


@given(st.text(alphabet="0123456789", min_size=12, max_size=19))
def test_luhn_accepts_exactly_one_check_digit(prefix: str) -> None:
    body = prefix[:-1]
    valid = [d for d in "0123456789" if luhn_valid(body + d)]
    assert len(valid) == 1
