from typing import Any

from django.core.paginator import Paginator
from rest_framework import pagination
from rest_framework.exceptions import NotFound
from rest_framework.request import Request


class PageNumberPagination(pagination.PageNumberPagination):
    """DRF's, held to what the schema says `page` is: a positive integer. DRF also reads an
    empty `page` as 1 and `last` as the last page, and Python's int() takes " 2" and "٢"."""

    last_page_strings = ()

    def get_page_number(self, request: Request, paginator: Paginator) -> Any:
        page_number = request.query_params.get(self.page_query_param)
        if page_number is None:
            return 1
        if not (page_number.isascii() and page_number.isdigit()):
            raise NotFound(self.invalid_page_message)
        return page_number
