from collections.abc import Iterable, Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# An order is three levels deep; nothing the API accepts comes near this.
MAX_DEPTH = 32


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with a bound on nesting. A body of 100,000 `[` fits well under
    API_MAX_BODY_BYTES and makes Python's json module raise RecursionError, which DRF does
    not catch (a 500); a body just under the interpreter's limit parses, and then fails in
    whatever walks it next (serializers, the Idempotency-Key fingerprint)."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.") from None
        if _deeper_than(data, MAX_DEPTH):
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.")
        return data


def _deeper_than(data: Any, limit: int) -> bool:
    # Iterative: walking a deep document recursively is the very problem.
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
