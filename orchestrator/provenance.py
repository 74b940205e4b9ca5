"""Where a result came from: psplab's version and the git commit of the code that produced it."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, str | None]:
    try:
        version = metadata.version("psplab")
    except metadata.PackageNotFoundError:
        version = None
    return {"psplab_version": version, "git_sha": _git_sha()}


def _git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else None
