"""The dataset layer: mnist5k, IDX and CIFAR-pickle loaders, and the downloader.

Everything is local: IDX files and CIFAR batches are written by the tests (from mnist5k pixels
or random bytes), and downloads come from an http.server on 127.0.0.1 in a thread.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import download as dl
from trainables.data import (DataError, load_cifar10, load_cifar100, load_dataset, load_mnist,
                             load_mnist5k, read_idx)

FAST = dict(timeout=2.0, retries=1, backoff=0.01)


# --- helpers -----------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, written independently of the reader under test."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist5k()


@pytest.fixture(scope="module")
def small_split(mnist5k):
    """64 training and 32 test digits as uint8 arrays, taken from mnist5k."""
    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return (x[:, 0] * 255).round().to(torch.uint8).numpy()

    return {
        "train-images-idx3-ubyte": to_uint8(mnist5k.train_x[:64]),
        "train-labels-idx1-ubyte": mnist5k.train_y[:64].numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(mnist5k.test_x[:32]),
        "t10k-labels-idx1-ubyte": mnist5k.test_y[:32].numpy().astype(np.uint8),
    }


def write_idx_dir(directory: Path, split: dict[str, np.ndarray], gz: bool) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for base, array in split.items():
        data = idx_bytes(array)
        path = directory / (base + ".gz" if gz else base)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[base] = path
    return paths


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cifar_batch(n: int, rng: np.random.Generator, label_key: str = "labels",
                classes: int = 10) -> dict:
    """A batch shaped like the real ones: bytes keys, uint8 (n, 3072) rows, a list of labels."""
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key.encode(): [int(v) for v in rng.integers(0, classes, n)],
            b"batch_label": b"fake"}


def write_cifar10(directory: Path, rng: np.random.Generator) -> dict[str, dict]:
    directory.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(4, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(3, rng)
    for name, batch in batches.items():
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def tar_gz(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


class FileServer:
    """Serves `files` on 127.0.0.1 and records (path, Range header) of every GET.

    ranges: honour Range with 206 (else ignore it and send the whole file with 200).
    cut_first: this many responses announce the full length but stop halfway and close.
    """

    def __init__(self, files: dict[str, bytes], ranges: bool = True, cut_first: int = 0):
        self.files, self.ranges, self.cut_left = files, ranges, cut_first
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                header = self.headers.get("Range")
                server.requests.append((name, header))
                if name not in server.files:
                    self.send_error(404)
                    return
                body, status, start = server.files[name], 200, 0
                if header and server.ranges:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_left > 0:
                    server.cut_left -= 1
                    payload = payload[: len(payload) // 2]
                    self.close_connection = True
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    # A proxy from the environment must not intercept requests to the local server.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers: list[FileServer] = []

    def start(files, **kwargs) -> FileServer:
        servers.append(FileServer(files, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- mnist5k -----------------------------------------------------------------------------------

def test_mnist5k_shapes_ranges_and_classes(mnist5k):
    assert mnist5k.train_x.shape == (4000, 1, 28, 28)
    assert mnist5k.test_x.shape == (1000, 1, 28, 28)
    assert mnist5k.train_x.dtype == torch.float32 and mnist5k.train_y.dtype == torch.int64
    for x in (mnist5k.train_x, mnist5k.test_x):
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    for y in (mnist5k.train_y, mnist5k.test_y):
        assert sorted(y.unique().tolist()) == list(range(10))
    assert mnist5k.image_shape == (1, 28, 28)


def test_mnist5k_split_is_deterministic(mnist5k):
    again = load_mnist5k()
    for a, b in zip((mnist5k.train_x, mnist5k.train_y, mnist5k.test_x, mnist5k.test_y),
                    (again.train_x, again.train_y, again.test_x, again.test_y)):
        assert torch.equal(a, b)


def test_load_dataset_caches_and_rejects_unknown_names():
    assert load_dataset("mnist5k") is load_dataset("mnist5k")
    with pytest.raises(DataError, match="imagenet"):
        load_dataset("imagenet")


# --- IDX ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, small_split, mnist5k, gz):
    write_idx_dir(tmp_path / "mnist", small_split, gz)
    data = load_dataset("mnist", str(tmp_path))
    assert data.name == "mnist"
    assert data.train_x.shape == (64, 1, 28, 28) and data.test_x.shape == (32, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.test_y.dtype == torch.int64
    assert torch.equal(data.train_x, mnist5k.train_x[:64])
    assert torch.equal(data.train_y, mnist5k.train_y[:64])
    assert torch.equal(data.test_x, mnist5k.test_x[:32])
    assert torch.equal(data.test_y, mnist5k.test_y[:32])


def test_fashion_falls_back_to_data_dir_and_default_dir_comes_from_env(
        tmp_path, small_split, monkeypatch):
    write_idx_dir(tmp_path, small_split, gz=True)  # directly in data_dir, no fashion_mnist/
    monkeypatch.setenv("PSPLAB_DATA", str(tmp_path))
    data = load_dataset("fashion_mnist")
    assert data.name == "fashion_mnist" and len(data.train_y) == 64


def test_file_uri_data_dir(tmp_path, small_split):
    write_idx_dir(tmp_path / "mnist", small_split, gz=False)
    assert len(load_dataset("mnist", tmp_path.as_uri()).test_y) == 32


def test_missing_idx_files_name_the_directory(tmp_path, small_split):
    paths = write_idx_dir(tmp_path / "mnist", small_split, gz=True)
    paths["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_mnist(tmp_path)
    assert str(tmp_path / "mnist") in str(info.value)
    assert "psp data download mnist" in str(info.value)


def _corrupt_bad_magic(data: bytes) -> bytes:
    return b"\x00\x00\x09" + data[3:]


def _corrupt_truncated(data: bytes) -> bytes:
    return data[:-100]


def _corrupt_short_header(data: bytes) -> bytes:
    return data[:6]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("corrupt, message", [
    (_corrupt_bad_magic, "magic"),
    (_corrupt_truncated, "truncated"),
    (_corrupt_short_header, "truncated"),
])
def test_corrupt_idx_names_the_file(tmp_path, small_split, gz, corrupt, message):
    paths = write_idx_dir(tmp_path / "mnist", small_split, gz)
    victim = paths["train-images-idx3-ubyte"]
    data = idx_bytes(small_split["train-images-idx3-ubyte"])
    victim.write_bytes(gzip.compress(corrupt(data)) if gz else corrupt(data))
    with pytest.raises(DataError, match=message) as info:
        load_mnist(tmp_path)
    assert str(victim) in str(info.value) and "\n" not in str(info.value)


def test_label_count_mismatch_names_the_file(tmp_path, small_split):
    split = dict(small_split)
    split["train-labels-idx1-ubyte"] = split["train-labels-idx1-ubyte"][:60]
    paths = write_idx_dir(tmp_path / "mnist", split, gz=False)
    with pytest.raises(DataError, match="64 images but train-labels-idx1-ubyte has 60") as info:
        load_mnist(tmp_path)
    assert str(paths["train-images-idx3-ubyte"]) in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path, small_split):
    paths = write_idx_dir(tmp_path / "mnist", small_split, gz=True)
    victim = paths["t10k-images-idx3-ubyte"]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(DataError, match="gzip") as info:
        load_mnist(tmp_path)
    assert str(victim) in str(info.value)


def test_read_idx_rejects_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="trailing"):
        read_idx(path, 1)
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)))
    assert read_idx(path, 1).tolist() == [0, 1, 2, 3, 4]


# --- CIFAR -------------------------------------------------------------------------------------

def test_cifar10_round_trip(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(1))
    data = load_dataset("cifar", str(tmp_path))
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0
    # Row layout: 1024 red, 1024 green, 1024 blue values; batches concatenated in order.
    row = batches["data_batch_2"][b"data"][1]
    assert data.train_x[5, 1, 0, 3].item() == pytest.approx(row[1024 + 3] / 255)
    assert data.train_x[5, 2, 31, 31].item() == pytest.approx(row[3071] / 255)
    expected = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert data.train_y.tolist() == expected
    assert data.test_y.tolist() == batches["test_batch"][b"labels"]
    # data_dir may also be the batches directory itself.
    assert torch.equal(load_cifar10(tmp_path / "cifar-10-batches-py").test_x, data.test_x)


def test_cifar100_round_trip_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    train = cifar_batch(6, rng, "fine_labels", 100)
    train[b"coarse_labels"] = [0] * 6
    test = cifar_batch(2, rng, "fine_labels", 100)
    (directory / "train").write_bytes(pickle.dumps(train, protocol=2))
    (directory / "test").write_bytes(pickle.dumps(test, protocol=2))
    data = load_cifar100(tmp_path)
    assert data.train_x.shape == (6, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    assert data.train_y.tolist() == train[b"fine_labels"]


def test_cifar_missing_or_corrupt_batch_names_the_file(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    write_cifar10(directory, np.random.default_rng(3))
    (directory / "test_batch").unlink()
    with pytest.raises(DataError, match="missing") as info:
        load_cifar10(tmp_path)
    assert str(directory / "test_batch") in str(info.value)

    (directory / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR pickle") as info:
        load_cifar10(tmp_path)
    assert str(directory / "test_batch") in str(info.value)

    (directory / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                         b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072") as info:
        load_cifar10(tmp_path)
    assert str(directory / "test_batch") in str(info.value)


# --- downloader: one file ----------------------------------------------------------------------

PAYLOAD = np.random.default_rng(4).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


def test_fetch_verifies_and_renames(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD})
    dest = dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "blob.bin.part").exists()
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    assert dl.fetch(server.url + "blob.bin", tmp_path / "again", md5, **FAST).exists()


def test_fetch_resumes_with_a_range_request(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD})
    half = len(PAYLOAD) // 2
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:half])
    dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert server.requests == [("blob.bin", f"bytes={half}-")]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_fetch_restarts_when_the_server_ignores_range(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD}, ranges=False)
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)
    dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert server.requests == [("blob.bin", "bytes=1000-")]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_fetch_starts_over_when_a_resumed_part_was_stale(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD})
    half = len(PAYLOAD) // 2
    (tmp_path / "blob.bin.part").write_bytes(b"y" * half)
    dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert server.requests == [("blob.bin", f"bytes={half}-"), ("blob.bin", None)]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_a_cut_transfer_is_retried_from_where_it_stopped(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD}, cut_first=1)
    dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert [r[0] for r in server.requests] == ["blob.bin", "blob.bin"]
    assert server.requests[0][1] is None and server.requests[1][1].startswith("bytes=")
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(tmp_path, serve):
    server = serve({"blob.bin": PAYLOAD})
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DataError, match="checksum mismatch") as info:
        dl.fetch(server.url + "blob.bin", tmp_path / "blob.bin", wrong, **FAST)
    message = str(info.value)
    assert "blob.bin" in message and "0" * 64 in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_is_a_quick_one_line_error(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/blob.bin"
    start = time.monotonic()
    with pytest.raises(DataError, match="cannot reach") as info:
        dl.fetch(url, tmp_path / "blob.bin", sha256(PAYLOAD), **FAST)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "--data-dir" in message and str(tmp_path) in message
    assert "\n" not in message
    assert not (tmp_path / "blob.bin").exists()


def test_http_404_is_not_retried(tmp_path, serve):
    server = serve({})
    with pytest.raises(DataError, match="HTTP 404"):
        dl.fetch(server.url + "missing.bin", tmp_path / "x", sha256(b""), timeout=2, retries=3,
                 backoff=5)  # a retry would make this test slow
    assert len(server.requests) == 1


# --- downloader: datasets ----------------------------------------------------------------------

def _mnist_files(split: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {base + ".gz": gzip.compress(idx_bytes(array)) for base, array in split.items()}


def test_download_mnist_then_load(tmp_path, serve, small_split, mnist5k):
    files = _mnist_files(small_split)
    server = serve(files)
    checksums = {name: sha256(data) for name, data in files.items()}
    where = dl.download("mnist", tmp_path, base_url=server.url, checksums=checksums, **FAST)
    assert where == tmp_path / "mnist"
    assert sorted(p.name for p in where.iterdir()) == sorted(files)
    assert torch.equal(load_mnist(tmp_path).test_x, mnist5k.test_x[:32])

    # Present and verified: nothing is fetched again, unless forced.
    count = len(server.requests)
    dl.download("mnist", tmp_path, base_url=server.url, checksums=checksums, **FAST)
    assert len(server.requests) == count
    dl.download("mnist", tmp_path, base_url=server.url, checksums=checksums, force=True, **FAST)
    assert len(server.requests) == count + 4


def test_download_from_a_file_uri_mirror(tmp_path, small_split):
    files = _mnist_files(small_split)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in files.items():
        (mirror / name).write_bytes(data)
    checksums = {name: sha256(data) for name, data in files.items()}
    dl.download("fashion_mnist", tmp_path / "data", base_url=mirror.as_uri(),
                checksums=checksums, **FAST)
    assert len(load_dataset("fashion_mnist", str(tmp_path / "data")).train_y) == 64


def test_download_mismatch_names_file_and_digests(tmp_path, serve, small_split):
    files = _mnist_files(small_split)
    server = serve(files)
    checksums = {name: sha256(data) for name, data in files.items()}
    checksums["t10k-images-idx3-ubyte.gz"] = "md5:" + "1" * 32
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz") as info:
        dl.download("mnist", tmp_path, base_url=server.url, checksums=checksums, **FAST)
    assert "1" * 32 in str(info.value)
    assert hashlib.md5(files["t10k-images-idx3-ubyte.gz"]).hexdigest() in str(info.value)
    left = {p.name for p in (tmp_path / "mnist").iterdir()}
    assert "t10k-images-idx3-ubyte.gz" not in left
    assert not any(name.endswith(".part") for name in left)


def test_http_data_dir_downloads_with_the_real_checksums(tmp_path, serve, small_split,
                                                         monkeypatch):
    # The fake files cannot match the published MNIST MD5s: the mismatch shows that load_dataset
    # went through the verifying downloader into the cache directory.
    server = serve(_mnist_files(small_split))
    monkeypatch.setenv("PSPLAB_DATA", str(tmp_path))
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_dataset("mnist", server.url)
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in str(info.value)
    assert server.requests[0][0] == "train-images-idx3-ubyte.gz"
    assert not any((tmp_path / "mnist").iterdir())


def test_download_cifar10_archive_extracts_and_loads(tmp_path, serve):
    rng = np.random.default_rng(5)
    batches = {f"data_batch_{i}": cifar_batch(2, rng) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(2, rng)
    archive = tar_gz({f"cifar-10-batches-py/{name}": pickle.dumps(batch, protocol=2)
                      for name, batch in batches.items()})
    server = serve({"cifar-10-python.tar.gz": archive})
    where = dl.download("cifar10", tmp_path, base_url=server.url,
                        checksums={"cifar-10-python.tar.gz": sha256(archive)}, **FAST)
    assert where == tmp_path / "cifar-10-batches-py"
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    # Neither the archive nor the staging directory is left behind (only the lock file).
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "cifar-10-batches-py"]
    data = load_cifar10(tmp_path)
    assert data.train_x.shape == (10, 3, 32, 32)
    assert data.test_y.tolist() == batches["test_batch"][b"labels"]
    # Already extracted: no second request.
    dl.download("cifar", tmp_path, base_url=server.url, **FAST)
    assert len(server.requests) == 1


@pytest.mark.parametrize("members, symlinks", [
    ({"cifar-10-batches-py/../../evil.txt": b"x"}, None),
    ({"/tmp/psplab-evil-absolute.txt": b"x"}, None),
    ({"cifar-10-batches-py/data_batch_1": b"x"}, {"cifar-10-batches-py/link": "/etc/passwd"}),
])
def test_unsafe_archive_members_are_refused(tmp_path, serve, members, symlinks):
    archive = tar_gz(members, symlinks)
    server = serve({"cifar-10-python.tar.gz": archive})
    data_dir = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="refusing"):
        dl.download("cifar10", data_dir, base_url=server.url,
                    checksums={"cifar-10-python.tar.gz": sha256(archive)}, **FAST)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/psplab-evil-absolute.txt").exists()
    assert not (data_dir / "cifar-10-batches-py").exists()


def test_cli_main_reports_a_data_error_as_exit_code_2(tmp_path, capsys):
    code = dl.main(["mnist", "--dir", str(tmp_path), "--base-url",
                    f"http://127.0.0.1:{closed_port()}/", "--timeout", "2", "--retries", "0"])
    assert code == 2
    assert "cannot reach" in capsys.readouterr().err


def test_psp_data_download_is_wired_into_the_main_cli(tmp_path, capsys):
    from orchestrator.cli import main as psp

    code = psp(["data", "download", "mnist", "--dir", str(tmp_path), "--base-url",
                f"http://127.0.0.1:{closed_port()}/", "--timeout", "2", "--retries", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach" in err[0], err
    assert not any(tmp_path.rglob("*.gz"))  # nothing half-fetched is left under its real name


def test_digest_parsing():
    assert dl.parse_digest("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert dl.parse_digest("b" * 64) == ("sha256", "b" * 64)
    with pytest.raises(DataError):
        dl.parse_digest("sha1:" + "0" * 40)
    assert all(dl.parse_digest(d) for s in dl.SOURCES.values() for _, d in s.files)


def test_input_norm_defaults_to_the_reference_scaling_of_each_stream():
    from trainables.config import TrialConfig

    assert TrialConfig().input_norm == "standardize"  # permuted MNIST: (x − 0.1307)/0.3081
    assert TrialConfig(stream="rotating").input_norm == "standardize"
    icifar = TrialConfig(model="resnet18", stream="incremental", dataset="cifar", heads="multi")
    assert icifar.input_norm == "symmetric"  # the reference's CIFAR Normalize((0.5,)*3, (0.5,)*3)
    assert TrialConfig(input_norm="unit").identity()["input_norm"] == "unit"  # a trials column


@pytest.mark.parametrize("mode, scale", [
    ("standardize", lambda x: (x - 0.1307) / 0.3081),
    ("symmetric", lambda x: 2 * x - 1),
    ("unit", lambda x: x),
])
def test_permuted_stream_scales_pixels_as_input_norm_says(mode, scale):
    from trainables.config import TrialConfig
    from trainables.contexts import task_permutation
    from trainables.streams import build_stream

    mnist = load_mnist5k()
    stream = build_stream(TrialConfig(input_norm=mode, seed=4), mnist)
    pixels = mnist.test_x.flatten(1)
    torch.testing.assert_close(stream.test_set(0)[0], scale(pixels), rtol=0, atol=1e-6)
    permuted = scale(pixels)[:, task_permutation(4, 2, 784)]
    torch.testing.assert_close(stream.test_set(2)[0], permuted, rtol=0, atol=1e-6)
    assert mnist.test_x.min() == 0  # the cached dataset itself is never scaled in place
