"""Storage fault injection: filesystems that fail, stall or die part-way, for testing stores.

psplab's tests use these to prove the store's guarantees, and they are just as useful for
checking a new storage backend or a custom sink before trusting it with a week-long sweep::

    from orchestrator import faults
    from orchestrator.store import Store

    store = Store("/tmp/x", filesystem=faults.faulty(fail_every=3))   # every 3rd write fails
    store = Store("/tmp/x", filesystem=faults.slow(delay_s=0.001))    # crawl, to kill mid-file

Both wrap a ``pyarrow.fs`` filesystem (local by default) in a ``PyFileSystem`` whose handler
delegates every call; only the write path is disturbed. ``fs.handler`` exposes the counters.
"""
from __future__ import annotations

import posixpath
import random
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

# The calls that change what a reader sees; "write" is a write() on an output stream.
WRITE_OPS = ("open_output_stream", "move", "write")


class InjectedFault(OSError):
    """Raised by a faulty filesystem; an OSError, as a real I/O failure would be."""


class DelegatingHandler(pafs.FileSystemHandler):
    """A ``FileSystemHandler`` that forwards every call to ``base`` and can disturb writes.

    fail_every: every k-th call among ``ops`` (counted together) raises InjectedFault.
    fail_probability, seed: instead, each call among ``ops`` fails with this probability.
    after: the failing call takes effect first, then raises (a lost acknowledgement).
    delay_s / piece_bytes: output streams write ``piece_bytes`` at a time and sleep
    ``delay_s`` before each piece, so a process killed meanwhile dies mid-file.
    """

    def __init__(self, base: pafs.FileSystem | None = None, *, fail_every: int | None = None,
                 fail_probability: float = 0.0, seed: int = 0, ops: Iterable[str] = WRITE_OPS,
                 after: bool = False, delay_s: float = 0.0, piece_bytes: int = 512):
        if fail_every is not None and fail_every < 1:
            raise ValueError(f"fail_every must be >= 1, got {fail_every}")
        if not 0.0 <= fail_probability <= 1.0:
            raise ValueError(f"fail_probability must be in [0, 1], got {fail_probability}")
        unknown = set(ops) - set(WRITE_OPS)
        if unknown:
            raise ValueError(f"unknown ops {sorted(unknown)}; choose from {WRITE_OPS}")
        self.base = base if base is not None else pafs.LocalFileSystem()
        self.fail_every = fail_every
        self.fail_probability = fail_probability
        self._random = random.Random(seed)
        self.ops = frozenset(ops)
        self.after = after
        self.delay_s = delay_s
        self.piece_bytes = piece_bytes
        self.calls = 0        # disturbed-op calls so far
        self.failures: list[str] = []  # "op path" of each injected fault

    # ---- fault bookkeeping ---------------------------------------------------------------
    def _due(self, op: str) -> bool:
        if op not in self.ops:
            return False
        self.calls += 1
        if self.fail_every is not None:
            return self.calls % self.fail_every == 0
        return self._random.random() < self.fail_probability

    def _fail(self, op: str, path: str) -> None:
        self.failures.append(f"{op} {path}")
        raise InjectedFault(f"injected fault: {op} {path}")

    # ---- the disturbed calls -------------------------------------------------------------
    def open_output_stream(self, path, metadata):
        due = self._due("open_output_stream")
        if due and not self.after:
            self._fail("open_output_stream", path)
        stream = self.base.open_output_stream(path, metadata=metadata)
        if due:
            stream.close()
            self._fail("open_output_stream", path)
        return pa.PythonFile(_DisturbedStream(stream, self, path), mode="w")

    def move(self, src, dest):
        if self.delay_s:  # a slow rename too, so kills also land between last byte and rename
            time.sleep(self.delay_s * 8)
        due = self._due("move")
        if due and not self.after:
            self._fail("move", dest)
        self.base.move(src, dest)
        if due:
            self._fail("move", dest)

    # ---- plain delegation ----------------------------------------------------------------
    def get_type_name(self):
        return "psplab-faults"

    def equals(self, other):
        return isinstance(other, DelegatingHandler) and other.base.equals(self.base)

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.base.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.base.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.base.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.base.delete_file(path)

    def copy_file(self, src, dest):
        self.base.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.base.open_input_stream(path)

    def open_input_file(self, path):
        return self.base.open_input_file(path)

    def open_append_stream(self, path, metadata):
        return self.base.open_append_stream(path, metadata=metadata)


class _DisturbedStream:
    """The file object behind a PythonFile: slices writes, sleeps, and injects write faults."""

    def __init__(self, stream: pa.NativeFile, handler: DelegatingHandler, path: str):
        self._stream = stream
        self._handler = handler
        self._path = path
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self._handler._due("write") and not self._handler.after:
            self._handler._fail("write", self._path)
        step = max(1, self._handler.piece_bytes) if self._handler.delay_s else len(view) or 1
        for start in range(0, len(view), step):
            if self._handler.delay_s:
                time.sleep(self._handler.delay_s)
            self._stream.write(view[start:start + step])
        return len(view)

    def flush(self) -> None:
        self._stream.flush()

    def tell(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stream.close()


class Killed(BaseException):
    """The process died here: not an error any code handles (a SIGKILL runs no handler)."""


class DyingHandler(DelegatingHandler):
    """Delegates every call until the ``die_at``-th call that changes what is stored (opening
    an output stream, a rename, a deletion); that call and every later one raise Killed
    without acting, as if the process had been SIGKILLed just before it. ``done`` lists the
    changing calls that took effect, as "op path"."""

    def __init__(self, die_at: int, base: pafs.FileSystem | None = None):
        super().__init__(base, ops=())
        self.die_at, self.changes, self.done = die_at, 0, []

    def _change(self, op: str, path: str) -> None:
        self.changes += 1
        if self.changes >= self.die_at:
            raise Killed(f"killed at {op} {path}")
        self.done.append(f"{op} {path}")

    def open_output_stream(self, path, metadata):
        self._change("open_output_stream", path)
        return super().open_output_stream(path, metadata)

    def move(self, src, dest):
        self._change("move", dest)
        super().move(src, dest)

    def delete_file(self, path):
        self._change("delete_file", path)
        super().delete_file(path)

    def delete_dir(self, path):
        self._change("delete_dir", path)
        super().delete_dir(path)


def dying(die_at: int, *, base: pafs.FileSystem | None = None) -> pafs.PyFileSystem:
    """A filesystem whose process 'dies' (raises Killed) at its ``die_at``-th change."""
    return pafs.PyFileSystem(DyingHandler(die_at, base))


def faulty(fail_every: int | None = None, *, fail_probability: float = 0.0, seed: int = 0,
           ops: Iterable[str] = ("open_output_stream", "move"), after: bool = False,
           base: pafs.FileSystem | None = None) -> pafs.PyFileSystem:
    """A filesystem on which every ``fail_every``-th write call (or a random
    ``fail_probability`` of them) raises InjectedFault."""
    return pafs.PyFileSystem(DelegatingHandler(
        base, fail_every=fail_every, fail_probability=fail_probability, seed=seed, ops=ops,
        after=after))


def slow(delay_s: float, *, piece_bytes: int = 512,
         base: pafs.FileSystem | None = None) -> pafs.PyFileSystem:
    """A filesystem whose output streams sleep ``delay_s`` before every ``piece_bytes`` bytes."""
    return pafs.PyFileSystem(DelegatingHandler(base, delay_s=delay_s, piece_bytes=piece_bytes))


def leave_partial_write(store, trial_id: str, task: int, table: pa.Table, fraction: float, *,
                        path: str | None = None) -> str:
    """Leave what a writer killed part-way through ``store.write_chunk`` leaves behind (or,
    with ``path``, through writing that file, e.g. ``store.published_path(trial_id)``).

    That is the first ``fraction`` of the chunk's bytes under the store's hidden temporary name
    and nothing at the chunk's own name. Returns the temporary file's path.
    """
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(store.prepare_chunk(trial_id, table), sink)
    body = sink.getvalue().to_pybytes()
    path = store.tmp_path(path or store.inflight_path(trial_id, task))
    store.fs.create_dir(posixpath.dirname(path), recursive=True)
    with store.fs.open_output_stream(path) as handle:
        handle.write(body[:int(len(body) * fraction)])
    return path


def write_legacy_chunk(store, trial_id: str, task: int, table: pa.Table) -> str:
    """Write ``table`` as psplab wrote a task's rows before ``trial.parquet``: a visible chunk
    ``steps/<trial>/task-K.parquet`` (stores of that layout are still read and compacted)."""
    import pyarrow.parquet as pq

    path = store.chunk_path(trial_id, task)
    store.fs.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(store.prepare_chunk(trial_id, table), path, filesystem=store.fs)
    return path


SYNTHETIC_PARAMS = {"model": "mlp", "psp": "binary", "units": 64, "depth": 2, "tasks": 1000,
                    "batch_size": 128, "lr": 1e-4, "optimizer": "rmsprop", "seed": 0,
                    "dataset": "mnist5k", "stream": "permuted"}


def synthetic_chunk(trial_id: str, task: int, attempt: int, *, steps_per_task: int = 10,
                    eval_every: int = 5, values: int = 0, sweep: str | None = "synthetic") -> pa.Table:
    """A chunk shaped like the training loop's: train rows for every step of ``task`` and test
    rows for every task seen so far every ``eval_every`` steps.

    Deterministic in all its arguments, so a checker can rebuild exactly what a writer wrote;
    ``values`` changes the losses and accuracies only (a rerun after a restore differs).
    """
    from trainables import schema

    noise = random.Random(f"{trial_id}/{task}/{attempt}/{values}")
    rows = []
    for offset in range(1, steps_per_task + 1):
        step = task * steps_per_task + offset
        rows.append({"step": step, "task": task, "context": task, "split": "train",
                     "loss": noise.random(), "accuracy": noise.random(), "n_examples": 128})
        if eval_every and offset % eval_every == 0:
            rows += [{"step": step, "task": task, "context": task, "split": "test",
                      "eval_task": seen, "accuracy": noise.random(), "n_examples": 1000}
                     for seen in range(task + 1)]
    params = {**SYNTHETIC_PARAMS, "steps_per_task": steps_per_task, "eval_every": eval_every}
    return schema.steps_table(rows, params, sweep=sweep, trial_id=trial_id, attempt=attempt)
