"""Fetch the public datasets into a local directory: checksummed, resumable, retried.

Standard library only (urllib): fetching four files must not add a dependency, and this module
imports nothing heavy (no torch) so that `psp data download` starts at once.

Layout under the data directory (what `trainables.data` reads):

    mnist/          train-images-idx3-ubyte.gz ... t10k-labels-idx1-ubyte.gz
    fashion_mnist/  the same four IDX names
    cifar-10-batches-py/   data_batch_1..5, test_batch   (extracted from the .tar.gz)
    cifar-100-python/      train, test                   (extracted from the .tar.gz)

Checksums are the published MD5s. MD5 only guards against corruption and truncation, not
against a malicious mirror; `checksums=` (or a table entry) may give "sha256:<hex>" instead.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent downloads are then the user's risk
    fcntl = None  # type: ignore[assignment]


class DataError(RuntimeError):
    """A dataset is missing, corrupt or unreachable; the message names the file or directory.

    Defined here rather than in `trainables.data` (which re-exports it) so that the downloader
    does not import torch.
    """


class UnreachableError(DataError):
    """No mirror answered with the file (offline, refused, HTTP error after retries)."""


DATA_ENV = "PSPLAB_DATA"
CHUNK = 1 << 20
USER_AGENT = "psplab-data/0.1 (+urllib)"
# Worth retrying: the server may recover. Any other HTTP error (404, 403, ...) will not.
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and where its files land under the data directory."""

    mirrors: tuple[str, ...]            # base URLs, tried in order
    files: tuple[tuple[str, str], ...]  # (file name, "md5:<hex>" or "sha256:<hex>")
    subdir: str = ""                    # files land in data_dir/subdir
    extracts_to: str | None = None      # for a .tar.gz: the top-level directory it holds
    extracted_files: tuple[str, ...] = ()  # present after a complete extraction


SOURCES: dict[str, Source] = {
    "mnist": Source(
        # The original host now refuses most scripted downloads; the S3 copy is the usual one.
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        files=(
            ("train-images-idx3-ubyte.gz", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "md5:d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "md5:9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "md5:ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        subdir="mnist",
    ),
    "fashion_mnist": Source(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            ("train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310"),
        ),
        subdir="fashion_mnist",
    ),
    "cifar10": Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"),),
        extracts_to=CIFAR10_DIR,
        extracted_files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
    ),
    "cifar100": Source(
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files=(("cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85"),),
        extracts_to=CIFAR100_DIR,
        extracted_files=("train", "test"),
    ),
}
# Names accepted by `download` beyond the keys of SOURCES (the trial config says "cifar").
ALIASES = {"cifar": "cifar10", "fashion-mnist": "fashion_mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}

Log = Callable[[str], None] | None


def default_data_dir() -> Path:
    """`$PSPLAB_DATA`, else ~/.cache/psplab/data."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "psplab" / "data"


def source_for(name: str) -> tuple[str, Source]:
    """The canonical name and source of a downloadable dataset."""
    canonical = ALIASES.get(name, name)
    if canonical not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise DataError(f"no download is known for dataset {name!r} (known: {known})")
    return canonical, SOURCES[canonical]


# --- checksums ---------------------------------------------------------------------------------

def parse_digest(text: str) -> tuple[str, str]:
    """("md5" | "sha256", lowercase hex) from "md5:<hex>", "sha256:<hex>" or a bare hex digest."""
    algo, sep, value = text.strip().partition(":")
    if not sep:  # bare hex: the length says which
        algo, value = {32: "md5", 64: "sha256"}.get(len(algo), "?"), algo
    algo, value = algo.lower(), value.lower()
    width = {"md5": 32, "sha256": 64}.get(algo)
    if width is None or len(value) != width or any(c not in "0123456789abcdef" for c in value):
        raise DataError(f"checksum {text!r} is not 'md5:<32 hex>' or 'sha256:<64 hex>'")
    return algo, value


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks (the CIFAR archives are 170 MB)."""
    # usedforsecurity=False: MD5 checks integrity here, and FIPS builds refuse it otherwise.
    hasher = hashlib.new(algo, usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _matches(path: Path, digest: str) -> bool:
    algo, expected = parse_digest(digest)
    return path.is_file() and file_digest(path, algo) == expected


# --- one file ----------------------------------------------------------------------------------

def _one_line(err: BaseException) -> str:
    reason = getattr(err, "reason", None) if isinstance(err, urllib.error.URLError) else None
    text = str(reason if reason is not None else err) or type(err).__name__
    return " ".join(text.split())


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a "bytes START-END/TOTAL" Content-Range, or None if unparsable."""
    if not content_range:
        return None
    unit, _, spec = content_range.strip().partition(" ")
    try:
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _write_stream(response, part: Path, mode: str) -> None:
    """Copy the response body into the part file; a local write failure is not worth a retry."""
    try:
        out = open(part, mode)
    except OSError as err:
        raise DataError(f"{part}: cannot write the download: {_one_line(err)}") from err
    received = 0
    with out:
        while chunk := response.read(CHUNK):  # network errors propagate to the retry loop
            try:
                out.write(chunk)
            except OSError as err:
                raise DataError(f"{part}: cannot write the download: {_one_line(err)}") from err
            received += len(chunk)
    # http.client's read(n) returns b"" on a connection closed early instead of raising.
    length = response.headers.get("Content-Length") if response.headers else None
    if length and length.isdigit() and received < int(length):
        raise http.client.IncompleteRead(b"", int(length) - received)


def _transfer(opener: urllib.request.OpenerDirector, url: str, part: Path,
              timeout: float) -> None:
    """One attempt: continue `part` from its current size (HTTP Range), or start it over.

    A server that ignores Range answers 200 with the whole file, and file:// URLs never honour
    it, so anything but a 206 starting exactly at our offset rewrites the part from byte 0.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            err.close()
            return  # nothing after our offset: the part is complete or stale; the checksum decides
        raise
    with response:
        status = getattr(response, "status", None)
        if offset and status == 206:
            if _range_start(response.headers.get("Content-Range")) != offset:
                part.unlink(missing_ok=True)
                raise http.client.HTTPException("server answered a different byte range")
            _write_stream(response, part, "ab")
        else:
            _write_stream(response, part, "wb")


def _transfer_with_retries(opener: urllib.request.OpenerDirector, url: str, part: Path, *,
                           timeout: float, retries: int, backoff: float, log: Log) -> None:
    """`_transfer` with bounded, exponentially spaced retries; each retry resumes the part."""
    reason = "no attempt made"
    for attempt in range(retries + 1):
        try:
            _transfer(opener, url, part, timeout)
            return
        except urllib.error.HTTPError as err:
            err.close()
            reason = f"HTTP {err.code} {err.reason}"
            if err.code not in TRANSIENT_HTTP:
                break
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = _one_line(err)
        if attempt < retries:
            delay = backoff * 2 ** attempt
            if log:
                log(f"  {url}: {reason}; retrying in {delay:.1f}s")
            time.sleep(delay)
    raise UnreachableError(
        f"cannot reach {url}: {reason}; put the files in {part.parent} or pass --data-dir")


def fetch(url: str, dest: str | Path, digest: str, *, timeout: float = 30.0, retries: int = 3,
          backoff: float = 1.0, log: Log = None) -> Path:
    """Download `url` to `dest`, verified against `digest` ("md5:<hex>" or "sha256:<hex>").

    The bytes go to `dest.part`, which is renamed onto `dest` only once its checksum matches, so
    `dest` is never a partial or unverified file. An existing part is resumed; if the resumed
    file fails the checksum (a part left from a different file), it is fetched once more from
    scratch. On a mismatch the part is deleted and DataError names the file and both digests.
    """
    dest = Path(dest)
    algo, expected = parse_digest(digest)
    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    # A fresh opener reads the proxy environment now, not when urllib was first used.
    opener = urllib.request.build_opener()
    retry = dict(timeout=timeout, retries=retries, backoff=backoff, log=log)
    if log:
        log(f"fetching {url}" + (f" (resuming at {part.stat().st_size} bytes)" if resumed else ""))
    _transfer_with_retries(opener, url, part, **retry)
    actual = file_digest(part, algo)
    if actual != expected and resumed:
        if log:
            log(f"  {dest.name}: the resumed file does not match its checksum; starting over")
        part.unlink()
        _transfer_with_retries(opener, url, part, **retry)
        actual = file_digest(part, algo)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(f"{dest}: checksum mismatch for {url}: expected {algo} {expected}, "
                        f"got {actual}; the download was deleted")
    os.replace(part, dest)
    return dest


def _fetch_from_mirrors(mirrors: tuple[str, ...], filename: str, dest: Path, digest: str,
                        **options) -> Path:
    """`fetch` from the first mirror that answers; a checksum mismatch is not retried elsewhere."""
    error: UnreachableError | None = None
    for base in mirrors:
        try:
            return fetch(join_url(base, filename), dest, digest, **options)
        except UnreachableError as err:
            error = err
    assert error is not None, "a source has at least one mirror"
    raise error


def join_url(base: str, filename: str) -> str:
    """`base` + `filename`, whether or not `base` ends in a slash (urljoin would drop its tail)."""
    return base.rstrip("/") + "/" + urllib.parse.quote(filename)


# --- archives ----------------------------------------------------------------------------------

def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything that could land outside the extraction directory or is not plain data."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts \
            or (path.parts and path.parts[0].endswith(":")):
        raise DataError(f"{archive}: refusing unsafe member path {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing member {member.name!r} (links and special files "
                        "are not expected in a dataset archive)")


# Python >= 3.12 (and patched 3.11) filters members itself; use it as a second line of defence.
_EXTRACT_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def safe_extract(archive: str | Path, into: str | Path, top: str) -> Path:
    """Extract `archive`, which must hold a single directory `top`, to `into/top`.

    Every member is checked before anything is written; extraction goes to a staging directory
    that is renamed into place, so an interrupted run never leaves a half-extracted dataset.
    """
    archive, into = Path(archive), Path(into)
    final = into / top
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))
            try:
                tar.extractall(staging, members=members, **_EXTRACT_FILTER)
                produced = staging / top
                if not produced.is_dir():
                    raise DataError(f"{archive}: does not contain the directory {top}/")
                if final.exists():
                    shutil.rmtree(final)
                os.replace(produced, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{archive}: cannot extract: {_one_line(err)}") from err
    return final


# --- datasets ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock: trials of one sweep in several processes may fetch the same
    dataset into the same cache at once, and must not write one .part file together."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(name: str, data_dir: str | Path | None = None, *, base_url: str | None = None,
             force: bool = False, checksums: Mapping[str, str] | None = None,
             timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
             log: Log = None) -> Path:
    """Fetch dataset `name` (mnist, fashion_mnist, cifar10, cifar100) into `data_dir`.

    Returns the directory holding the dataset's files. Files already present with the right
    checksum are kept unless `force`. `base_url` replaces the built-in mirrors (an internal
    mirror or a `file://` directory holding the same file names). `checksums` maps file names
    to digests that replace the built-in ones (for mirrors of other files, and for tests).
    `timeout` (seconds per connection), `retries` and `backoff` (first delay, doubled each
    retry) bound how long an unreachable host can hold the caller.
    """
    canonical, source = source_for(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    mirrors = (base_url,) if base_url else source.mirrors
    overrides = dict(checksums or {})
    for digest in overrides.values():
        parse_digest(digest)  # a malformed override should fail before any transfer
    options = dict(timeout=timeout, retries=retries, backoff=backoff, log=log)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{root}: cannot create the data directory: {_one_line(err)}") from err
    with _exclusive(root / f".{canonical}.lock"):
        return _download_locked(source, root, mirrors, overrides, force, options, log)


def _download_locked(source: Source, root: Path, mirrors: tuple[str, ...],
                     overrides: dict[str, str], force: bool, options: dict, log: Log) -> Path:
    """`download`'s work, under the dataset's lock."""
    if source.extracts_to:
        final = root / source.extracts_to
        if not force and all((final / f).is_file() for f in source.extracted_files):
            if log:
                log(f"{final}: already present")
            return final
    target = root / source.subdir
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{target}: cannot create the data directory: {_one_line(err)}") from err

    for filename, digest in source.files:
        digest = overrides.get(filename, digest)
        dest = target / filename
        if not force and dest.exists():
            if _matches(dest, digest):
                if log:
                    log(f"{dest}: already present, checksum ok")
                continue
            if log:
                log(f"{dest}: checksum does not match; fetching it again")
        _fetch_from_mirrors(mirrors, filename, dest, digest, **options)

    if source.extracts_to:
        archive = target / source.files[0][0]
        final = safe_extract(archive, root, source.extracts_to)
        archive.unlink()  # the extracted batches are what the loaders read
        return final
    return target


def cli_download(name: str, data_dir: str | Path | None = None, *, base_url: str | None = None,
                 force: bool = False, echo: Callable[[str], None] = print, **options) -> Path:
    """`psp data download NAME --dir D`: `download` with progress lines sent to `echo`.

    Raises DataError (a one-line user error) on failure; the CLI prints it without a traceback.
    """
    path = download(name, data_dir, base_url=base_url, force=force, log=echo, **options)
    echo(f"{name}: ready in {path}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `psp data download`, for reuse by the main CLI."""
    parser.add_argument("name", choices=sorted(SOURCES) + sorted(ALIASES),
                        help="dataset to fetch")
    parser.add_argument("--dir", dest="data_dir", default=None,
                        help=f"data directory (default: ${DATA_ENV} or ~/.cache/psplab/data)")
    parser.add_argument("--base-url", default=None,
                        help="mirror to fetch from instead of the canonical one (http(s):// or "
                             "file://)")
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")
    parser.add_argument("--retries", type=int, default=3, help="retries per file")
    return parser


def register(sub) -> None:
    """`psp data download NAME [--dir D]` in the main CLI (orchestrator/cli.py)."""
    data = sub.add_parser("data", help="datasets: download (checksummed, resumable)")
    actions = data.add_subparsers(dest="data_command", required=True,
                                  parser_class=type(data))
    fetch = add_arguments(actions.add_parser(
        "download", help="fetch a dataset into the data directory and verify its checksums"))
    fetch.set_defaults(func=_cmd_download)


def _cmd_download(args: argparse.Namespace) -> int:
    # DataError propagates: the main CLI prints it as one line with exit code 2.
    cli_download(args.name, args.data_dir, base_url=args.base_url, force=args.force,
                 timeout=args.timeout, retries=args.retries)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m trainables.download NAME [--dir D]`; exit code 2 on a data error."""
    args = add_arguments(argparse.ArgumentParser(prog="psp data download")).parse_args(argv)
    try:
        cli_download(args.name, args.data_dir, base_url=args.base_url, force=args.force,
                     timeout=args.timeout, retries=args.retries)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
