"""Which exceptions are the user's to fix: printed as one line with exit code 2, no traceback."""
from __future__ import annotations

# Matched by class name along the MRO so this module imports nothing heavy (torch, Ray).
USER_ERRORS = {
    "UserError", "DataError", "StoreError", "SchemaError", "SpecError", "CapacityError",
    "QueryError", "ClusterConfigError",
}


def user_facing(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None for a bug (which keeps its traceback)."""
    if any(cls.__name__ in USER_ERRORS for cls in type(exc).__mro__):
        return " ".join(str(exc).split())
    return None
