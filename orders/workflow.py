"""The order's Celery canvas, in one place.

    chain(
        chord([reserve_stock(line) for each line]),   # in parallel
        charge_payment, create_shipment, send_confirmation_email,
    )

Every task takes ids, never model instances. The canvas is dispatched only after the
order's transaction has committed (orders/services.py). The recovery sweep resumes an order
from the step it reached with `resume`; a failed or cancelled order gets `compensate`.
"""

from celery import chain, chord
from celery.canvas import Signature

from .models import Order, OrderStatus


def build(*, order_id, line_ids: list[int], from_status: str = OrderStatus.PENDING) -> Signature:
    from . import tasks

    oid = str(order_id)
    ship = tasks.create_shipment.si(order_id=oid)
    confirm = tasks.send_confirmation_email.si(order_id=oid)
    if from_status in (OrderStatus.PENDING, OrderStatus.RESERVING):
        reserve = chord(
            [tasks.reserve_stock.si(order_id=oid, line_id=line_id) for line_id in line_ids],
            tasks.charge_payment.s(order_id=oid),  # receives the reservations' results
        )
        return chain(reserve, ship, confirm)
    if from_status == OrderStatus.PAYING:
        return chain(tasks.charge_payment.si(order_id=oid), ship, confirm)
    if from_status == OrderStatus.SHIPPING:
        return chain(ship, confirm)
    if from_status == OrderStatus.CONFIRMING:
        return confirm
    raise ValueError(f"no workflow from status {from_status!r}")


def start(*, order_id) -> None:
    line_ids = list(Order.objects.get(pk=order_id).lines.values_list("id", flat=True))
    build(order_id=order_id, line_ids=line_ids).apply_async()


def resume(*, order: Order) -> None:
    if order.status in (OrderStatus.FAILED, OrderStatus.CANCELLED):
        compensate(order_id=order.id)
        return
    line_ids = list(order.lines.values_list("id", flat=True))
    build(order_id=order.id, line_ids=line_ids, from_status=order.status).apply_async()


def compensate(*, order_id) -> None:
    from . import tasks

    tasks.compensate_order.delay(order_id=str(order_id))
