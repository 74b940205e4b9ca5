"""Which exceptions are the user's to fix: printed as one line with exit code 2, no traceback."""
from __future__ import annotations

# Matched by class name along the MRO so this module imports nothing heavy (torch, Ray).
USER_ERRORS = {
    "UserError", "DataError", "StoreError", "SchemaError", "SpecError", "CapacityError",
    "ForecastError", "QueryError", "ClusterConfigError",
}


def user_facing(exc: BaseException) -> str | None:
    """The one-line message for a user error, or None for a bug (which keeps its traceback)."""
    if any(cls.__name__ in USER_ERRORS for cls in type(exc).__mro__):
        return " ".join(str(exc).split())
    return None


def fail(command: str, message: object) -> int:
    """Print ``psp COMMAND: error: MESSAGE`` on one line, as `psp` prints every user error;
    returns the exit code, 2."""
    import sys

    print(f"psp {command}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def missing_local_path(uri: str) -> bool:
    """A local path (not a URI) that does not exist: said at once, before pandas and scipy
    load (~2 s)."""
    import os

    return "://" not in uri and not os.path.exists(uri)
