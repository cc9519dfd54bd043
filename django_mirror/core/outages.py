"""Whether an error means a store or service could not be reached, rather than that
the request itself was refused: replay stops and retries on the first, and dead-letters
the event on the second."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from django.db import DatabaseError, DataError, IntegrityError

#: AWS error codes that refuse the request itself; any other means AWS could not serve it.
_AWS_REFUSALS = frozenset(
    {
        "ValidationException",
        "ConditionalCheckFailedException",
        "TransactionCanceledException",
        "SerializationException",
        "InvalidParameterException",
        "InvalidArgumentException",
    }
)
#: Names of exception classes client libraries raise for a server they cannot reach or
#: that does not answer in time (redis-py's ``ConnectionError`` is no ``OSError``).
_UNREACHABLE_NAMES = frozenset(
    {"ConnectionError", "TimeoutError", "Timeout", "ConnectionFailure", "OperationalError"}
)


def infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says a store or service could not be
    reached or could not answer: the call is not at fault, so replay stops there without
    a checkpoint and tries again, instead of dead-lettering every call until it is back."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError):
            if current.response.get("Error", {}).get("Code") not in _AWS_REFUSALS:
                return True
        elif isinstance(current, DatabaseError):
            if not isinstance(current, DataError | IntegrityError):
                return True
        elif isinstance(current, OSError | BotoCoreError):
            if not isinstance(current, ParamValidationError):
                return True
        elif any(k.__name__ in _UNREACHABLE_NAMES for k in type(current).__mro__):
            return True
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    return False
