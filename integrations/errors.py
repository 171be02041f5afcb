class ProviderError(Exception):
    """A third party (gateway, carrier, mail server) did not do what was asked."""


class TransientError(ProviderError):
    """Worth retrying: a timeout, a dropped connection, a 5xx or 429."""


class PermanentError(ProviderError):
    """Retrying cannot help: a decline, a rejected address, a 4xx."""

    def __init__(self, message: str, *, code: str = "rejected") -> None:
        super().__init__(message)
        self.code = code
