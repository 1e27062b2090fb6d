"""What storage raises, whichever backend answered: one-line errors that name the URI and say
whether trying again later may succeed."""
from __future__ import annotations


class StorageError(OSError):
    """An object could not be read or written; the message names the URI and the reason.
    `transient`: trying again later may succeed (the connection failed or timed out, the server
    answered 5xx or asked to slow down), as opposed to a missing object or a refused access."""

    transient = False

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class NotFound(StorageError):
    """The file, object or bucket does not exist."""


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is a transient StorageError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, StorageError):
            return error.transient
        error = error.__cause__ or error.__context__
    return False


def one_line(text: object) -> str:
    return " ".join(str(text).split())
