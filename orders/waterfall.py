"""An order's story as a picture: one bar per step attempt, from the moment the task began
to the entry it wrote, coloured by outcome, on one time axis from the order's creation to
its last entry. Drawn by the server as inline SVG, so the admin needs no script or asset."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .models import Order, OrderEvent

COLOURS = {
    "succeeded": "#2e7d32",
    "created": "#455a64",
    "retrying": "#ef6c00",
    "busy": "#9e9e9e",
    "skipped": "#bdbdbd",
    "failed": "#c62828",
    "resumed": "#1565c0",
    "cancelled": "#6a1b9a",
}
WIDTH, LABEL, ROW, BAR = 900, 230, 18, 12  # pixels


def _offset(at: datetime, start: datetime, span: float) -> float:
    return LABEL + (WIDTH - LABEL - 10) * (at - start).total_seconds() / span


def waterfall_svg(*, order: Order, events: Sequence[OrderEvent]) -> SafeString:
    if not events:
        return format_html("<p>No timeline yet.</p>")
    start = min([order.created_at, *(e.started_at for e in events if e.started_at)])
    end = max(e.at for e in events)
    span = max((end - start).total_seconds(), 0.001)
    rows = []
    for i, event in enumerate(events):
        y = 20 + i * ROW
        x_end = _offset(event.at, start, span)
        x_start = _offset(event.started_at, start, span) if event.started_at else x_end
        colour = COLOURS.get(event.outcome, "#000")
        took = (event.at - event.started_at).total_seconds() if event.started_at else 0.0
        rows.append(
            (
                y + BAR - 2,
                f"{event.step} #{event.attempt}",
                f"{x_start:.1f}",
                y,
                f"{max(x_end - x_start, 3):.1f}",
                BAR,
                colour,
                (
                    f"{event.step} {event.outcome} ({event.reason_code or '-'}) "
                    f"{took:.3f}s: {event.detail}"
                ),
            )
        )
    body = format_html_join(
        "",
        '<text x="4" y="{}" font-size="11">{}</text>'
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        rows,
    )
    height = 30 + len(events) * ROW
    return format_html(
        '<svg class="order-waterfall" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" '
        'width="720" role="img" aria-label="timeline of order {}">'
        '<text x="{}" y="12" font-size="11">0 s</text>'
        '<text x="{}" y="12" font-size="11" text-anchor="end">{} s</text>{}</svg>',
        WIDTH,
        height,
        order.id,
        LABEL,
        WIDTH - 10,
        f"{span:.2f}",
        body,
    )
