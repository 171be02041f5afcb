"""The order's state machine: every pair of statuses, walked through the one function that
changes a status. An allowed move saves and writes one timeline entry naming who acted and
why; any other move raises and leaves the order and its timeline as they were."""

import itertools

import pytest

from orders.models import (
    CANCELLABLE_STATUSES,
    FAILABLE_STATUSES,
    ORDER_TRANSITIONS,
    TERMINAL_STATUSES,
    Order,
    OrderStatus,
    Step,
)
from orders.state import SYSTEM, Actor, IllegalTransition, order_transition
from tests.factories import OrderFactory, UserFactory

ALL_MOVES = list(itertools.product(OrderStatus.values, repeat=2))


@pytest.mark.parametrize(("start", "to"), ALL_MOVES, ids=[f"{a}->{b}" for a, b in ALL_MOVES])
def test_every_move_is_allowed_exactly_when_the_table_says(db, start, to):
    order = OrderFactory(status=start)
    events = order.events.count()

    if to in ORDER_TRANSITIONS[start]:
        moved = order_transition(
            order=order, to=to, step=Step.ORDER, outcome="succeeded", reason_code="test"
        )
        assert moved.status == to
        assert Order.objects.get(pk=order.pk).status == to
        event = order.events.latest("id")
        assert order.events.count() == events + 1
        assert (event.status, event.reason_code, event.actor_kind) == (to, "test", "system")
        assert event.data["from"] == start
    else:
        with pytest.raises(IllegalTransition):
            order_transition(
                order=order, to=to, step=Step.ORDER, outcome="succeeded", reason_code="test"
            )
        assert Order.objects.get(pk=order.pk).status == start
        assert order.events.count() == events


def test_the_table_names_every_status_and_only_statuses():
    assert set(ORDER_TRANSITIONS) == set(OrderStatus.values)
    assert all(moves <= set(OrderStatus.values) for moves in ORDER_TRANSITIONS.values())


def test_what_the_table_implies():
    assert TERMINAL_STATUSES == {"completed", "failed", "cancelled"}
    # Until shipment creation begins the customer may cancel ...
    assert CANCELLABLE_STATUSES == {"pending", "reserving", "paying", "awaiting_payment_action"}
    # ... and once the shipment exists nothing may fail (refund) the order.
    assert "confirming" not in FAILABLE_STATUSES
    assert ORDER_TRANSITIONS["confirming"] == {"completed"}
    # Every non-terminal status can reach completion.
    for status in set(OrderStatus.values) - TERMINAL_STATUSES:
        seen, frontier = set(), {status}
        while frontier:
            current = frontier.pop()
            seen.add(current)
            frontier |= set(ORDER_TRANSITIONS[current]) - seen
        assert "completed" in seen, status


def test_the_timeline_names_the_user_who_acted(db):
    staff = UserFactory(is_staff=True)
    order = OrderFactory(status=OrderStatus.PENDING)

    order_transition(
        order=order,
        to=OrderStatus.CANCELLED,
        step=Step.ORDER,
        outcome="cancelled",
        reason_code="cancelled",
        actor=Actor.for_user(staff),
    )

    event = order.events.latest("id")
    assert (event.actor_kind, event.actor) == ("staff", staff)
    assert Actor.for_user(order.user).kind == "customer"
    assert SYSTEM.describe() == "system"
