class ApplicationError(Exception):
    """An error the API shows to the client as it is: one type, one error shape."""

    status_code = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        fields: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.fields = fields


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"


class StepNotReady(Exception):
    """A step ran before what it builds on was done (e.g. a duplicate chord callback)."""
