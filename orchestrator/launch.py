"""`psp sweep launch|resume|status`: a validated sweep spec → a Ray Tune experiment.

A sweep named NAME under STORAGE (a path every node can reach, or an s3:// / gs:// URI)::

    STORAGE/NAME/                     Tune's experiment: tuner.pkl, experiment_state-*.json,
                                      one directory per trial with its task checkpoints
    STORAGE/NAME/psplab/sweep.json    what `resume` needs: the effective grid, resources, limits
    STORAGE/NAME/results/             the results store (per-step Parquet, trials table)

The sweep's record is in a directory of its own because Tune's restore copies every ``*.json``
and ``*.pkl`` at the experiment's top level to its staging directory and uploads them back on
every snapshot, rewriting each file in place: a driver killed mid-copy left the record psplab
kept there (``psplab-sweep.json``, still read for sweeps launched before) empty, and the sweep
could not be resumed. Tune lists that level only, so it never touches ``psplab/``.

Launching never touches an existing sweep: Tune would overwrite its ``tuner.pkl``. Resuming
restores Tune's experiment with unfinished and errored trials resumed from their last task
checkpoint. `status` reads files only (Tune's snapshot and the store), so it works while the
sweep runs, after it ended, and after its driver died — and it does not import Ray.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import posixpath
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from orchestrator.cli import UserError
from orchestrator.spec import SweepSpec, check_name
from orchestrator.store import Store, StoreError, resolve

SWEEP_FILE = "psplab/sweep.json"
LEGACY_SWEEP_FILE = "psplab-sweep.json"  # where psplab kept it before: Tune rewrites it there
# The Tune config key of a packed trial: its members' grid values (the rest of the config is
# shared by all of them).
PACK_KEY = "pack_members"
CLIENT_SESSION_TRIES = 3  # ray:// sessions the Ray Client server failed to start, retried
# Set before Ray is imported: no usage reporting; no per-trial CSV/JSON/TensorBoard loggers
# (every measurement is already in the store, and they cost time); no nagging about the
# snapshot that a task checkpoint forces.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@dataclass(frozen=True)
class SweepPaths:
    storage: str     # absolute path or URI: Tune's storage_path
    name: str

    @property
    def experiment(self) -> str:
        return _join(self.storage, self.name)

    @property
    def store(self) -> str:
        return _join(self.storage, self.name, "results")

    @property
    def sweep_file(self) -> str:
        return _join(self.storage, self.name, SWEEP_FILE)

    @property
    def legacy_sweep_file(self) -> str:
        return _join(self.storage, self.name, LEGACY_SWEEP_FILE)

    def has_record(self) -> bool:
        return _exists(self.sweep_file) or _exists(self.legacy_sweep_file)

    def for_tune(self, *parts: str) -> tuple[str, pafs.FileSystem | None]:
        """(path, filesystem) for Tune. A URI is resolved here, as the store resolves it,
        options and all: handed the URI, Tune's pyarrow refuses the query options psplab
        itself applies (connect_timeout, request_timeout, retries)."""
        if "://" not in self.storage:
            return posixpath.join(self.storage, *parts), None
        fs, root = resolve(self.storage)
        return posixpath.join(root, *parts), fs


def _join(uri: str, *parts: str) -> str:
    """Join below a path or URI, keeping a URI's options (``s3://b/x?region=...``) at its end."""
    split = urllib.parse.urlsplit(uri) if "://" in uri else None
    if split is None or not split.query:
        return posixpath.join(uri, *parts)
    return urllib.parse.urlunsplit(split._replace(path=posixpath.join(split.path, *parts)))


def sweep_paths(storage: str, name: str) -> SweepPaths:
    check_name(name)
    if "://" not in storage:
        storage = os.path.abspath(os.path.expanduser(storage))
    return SweepPaths(storage.rstrip("/"), name)


# ---- launch and resume ----------------------------------------------------------------------
def launch(spec: SweepSpec, *, name: str | None = None, storage: str | None = None,
           address: str | None = None, resume: bool = False, smoke: bool = False,
           verbose: int = 1) -> int:
    """Run every grid point of ``spec``; returns the exit code (0: every trial finished)."""
    paths = sweep_paths(storage or spec.storage, name or spec.name or "sweep")
    grid, fixed = spec.axes(smoke=smoke)
    meta = {"name": paths.name, "store": paths.store, "grid": grid, "fixed": fixed,
            "resources": spec.resources.model_dump(), "max_concurrent": spec.max_concurrent,
            "max_failures": spec.max_failures, "checkpoint_keep": spec.checkpoint_keep,
            "trials": len(spec.trials(smoke=smoke)), "pack": spec.pack}
    if _exists(paths.experiment):
        if not resume:
            raise UserError(f"sweep {paths.name!r} exists at {paths.experiment}; continue it with "
                            f"`psp sweep resume {paths.name} --storage {paths.storage}` (or "
                            f"`launch --resume`), or pick another --name")
        old = read_sweep_file(paths)
        if (old["grid"], old["fixed"], old.get("pack", "off")) != (_jsonable(grid), _jsonable(fixed),
                                                                    spec.pack):
            raise UserError(f"sweep {paths.name!r} at {paths.experiment} was launched with another "
                            f"grid or pack setting; it resumes only as launched: pick another --name")
        return resume_sweep(paths.name, paths.storage, address=address, verbose=verbose)
    tune, started = _connect(address)
    try:
        _check_resources(meta["resources"], autoscaling=address is not None)
        meta["packs"] = grid_packs(grid, fixed, spec.pack, gpu=spec.resources.gpu)
        Store(paths.store).initialise()
        _write_json(paths.sweep_file, meta)
        packing = f" in {len(meta['packs'])} packs" if meta["packs"] is not None else ""
        print(f"sweep {paths.name}: {meta['trials']} trials{packing} → {paths.experiment}", flush=True)
        return _run(_new_tuner(tune, meta, paths, verbose), paths, meta)
    finally:
        _disconnect(started)


def resume_sweep(name: str, storage: str, *, address: str | None = None, verbose: int = 1) -> int:
    """Finish a sweep whose driver stopped: unfinished and errored trials resume from their
    last task checkpoint; finished trials are left alone."""
    paths = sweep_paths(storage, name)
    if not paths.has_record():
        raise UserError(f"no sweep {name!r} under {paths.storage} (looked for {paths.sweep_file})")
    meta = read_sweep_file(paths, migrate=True)
    tune, started = _connect(address)
    try:
        _check_resources(meta["resources"], autoscaling=address is not None)
        experiment, fs = paths.for_tune(paths.name)
        if tune.Tuner.can_restore(experiment, storage_filesystem=fs):
            for line in restore_missing_checkpoints(paths):
                print(line, flush=True)
            tuner = tune.Tuner.restore(experiment, trainable=_trainable(tune, meta),
                                       resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=fs)
        elif Store(paths.store).read_trials().empty:
            # The driver died before Tune saved anything: nothing ran, start it afresh.
            tuner = _new_tuner(tune, meta, paths, verbose)
        else:
            raise UserError(f"{paths.experiment}: Tune's state is missing but the store has "
                            f"rows; launch under another --name")
        print(f"sweep {name}: resuming {paths.experiment}", flush=True)
        return _run(tuner, paths, meta)
    finally:
        _disconnect(started)


def restore_missing_checkpoints(paths: SweepPaths) -> list[str]:
    """Give every unfinished trial the checkpoint Tune's snapshot names, before a resume.

    Tune deletes a trial's older checkpoints (``checkpoint_keep``) as soon as a newer one is
    reported, but saves its experiment snapshot only every few seconds. A driver killed in
    between leaves a snapshot naming a deleted checkpoint, and `Tuner.restore` then fails
    that trial on every retry ("does not exist on storage anymore"; seen on CI). The trial's
    newest surviving checkpoint is copied under the missing name: it resumes from later work,
    never earlier, and a task it runs again replaces that task's chunk in the store.
    Returns one line per trial mended.
    """
    fs, root = resolve(paths.experiment)
    mended = []
    for trial_id, trial in _tune_trials(paths)[0].items():
        named, directory = trial.get("checkpoint"), trial.get("dir")
        if trial.get("status") == "TERMINATED" or not named or not directory:
            continue
        trial_dir = posixpath.join(root, directory)
        if fs.get_file_info(posixpath.join(trial_dir, named)).type != pafs.FileType.NotFound:
            continue
        selector = pafs.FileSelector(trial_dir, allow_not_found=True, recursive=False)
        surviving = sorted(info.base_name for info in fs.get_file_info(selector)
                           if info.type == pafs.FileType.Directory
                           and info.base_name.startswith("checkpoint_") and info.base_name > named)
        if not surviving:
            continue  # nothing newer to resume from: Tune's own error says what is missing
        fs.create_dir(posixpath.join(trial_dir, named))  # a local copy needs its directory
        pafs.copy_files(posixpath.join(trial_dir, surviving[-1]), posixpath.join(trial_dir, named),
                        source_filesystem=fs, destination_filesystem=fs)
        mended.append(f"trial {trial_id}: Tune's snapshot names {named}, deleted after it was "
                      f"taken; resuming from {surviving[-1]} (copied to {named})")
    return mended


def grid_packs(grid: dict[str, list], fixed: dict[str, Any], pack: str | int, *,
               gpu: float) -> list[list[dict[str, Any]]] | None:
    """The grid points grouped into packs, each a list of grid-axis values (None: no packing).

    The pack size 'auto' picks is the one for the device the trials will get (the spec's
    resources), not the driver's: a driver on a CPU head node launches GPU trials.
    """
    if pack in ("off", 1):
        return None
    from trainables.config import TrialConfig
    from trainables.packed import pack_groups  # imports torch: only packed sweeps pay for it

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    cfgs = [TrialConfig(**fixed, **point) for point in points]
    groups = pack_groups(cfgs, pack, device="cuda" if gpu > 0 else "cpu")
    return [[points[i] for i in group] for group in groups]


def member_trial_id(pack_id: str, k: int) -> str:
    """The store's trial id of member k of the pack that Tune runs as trial ``pack_id``."""
    return f"{pack_id}_p{k}"


def expand_packs(trials: dict[str, dict]) -> dict[str, dict]:
    """Tune's trials as the store counts them: a pack's Tune trial stands for each of its
    members (with the pack's state and the member's own config)."""
    expanded = {}
    for trial_id, trial in trials.items():
        config = trial.get("config") or {}
        if PACK_KEY not in config:
            expanded[trial_id] = trial
            continue
        shared = {key: value for key, value in config.items() if key != PACK_KEY}
        for k, member in enumerate(config[PACK_KEY]):
            expanded[member_trial_id(trial_id, k)] = {**trial, "config": {**shared, **member}}
    return expanded


def _new_tuner(tune, meta: dict[str, Any], paths: SweepPaths, verbose: int):
    if meta.get("packs") is not None:  # one Tune trial per pack
        param_space = {**meta["fixed"], PACK_KEY: tune.search.grid_search(meta["packs"])}
    else:
        param_space = {**meta["fixed"],
                       **{key: tune.search.grid_search(values) for key, values in meta["grid"].items()}}
    storage_path, fs = paths.for_tune()
    return tune.Tuner(
        _trainable(tune, meta),
        param_space=param_space,
        tune_config=tune.TuneConfig(max_concurrent_trials=meta["max_concurrent"],
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=paths.name, storage_path=storage_path, storage_filesystem=fs, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=meta["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=meta["checkpoint_keep"]),
        ),
    )


def _entry(config: dict[str, Any], *, sweep: str, store_uri: str, packed: bool) -> None:
    # Imported here, in the trial's worker: the driver never needs torch (1.5-2 s to import).
    from orchestrator import trainable

    run = trainable.run_pack if packed else trainable.run_trial
    run(config, sweep=sweep, store_uri=store_uri)


def _trainable(tune, meta: dict[str, Any]):
    # Resources are per Tune trial: a pack is one process and asks for what one trial would.
    resources = {"cpu": meta["resources"]["cpu"], "gpu": meta["resources"]["gpu"]}
    fn = tune.with_parameters(_entry, sweep=meta["name"], store_uri=meta["store"],
                              packed=meta.get("packs") is not None)
    fn.__name__ = "psplab"  # Tune names trials and their directories after the trainable
    return tune.with_resources(fn, resources)


def _run(tuner, paths: SweepPaths, meta: dict[str, Any]) -> int:
    clock = time.perf_counter()
    results = tuner.fit()
    states = Counter("ERROR" if r.error else "TERMINATED" for r in results)
    elapsed = time.perf_counter() - clock
    # Tune's results are packs in a packed sweep; the store counts their members as trials.
    noun = "trial" if meta.get("packs") is None else "pack"
    held = "" if noun == "trial" else f" holding {meta['trials']} trials"
    print(f"\nsweep {paths.name}: {len(results)} {noun}s{held}, {states['TERMINATED']} finished, "
          f"{states['ERROR']} failed, in {elapsed:.0f} s")
    print(f"results:  {paths.store}")
    print(f"analyse:  psp results {paths.store}")
    print(f"          psp plots {paths.store} --out results/figures/{paths.name}")
    print(f"status:   psp sweep status {paths.name} --storage {paths.storage}")
    print("\n".join(_restart_lines(paths)))
    if states["ERROR"]:
        print(f"{states['ERROR']} {noun}(s) failed after their retries; `psp sweep resume "
              f"{paths.name} --storage {paths.storage}` retries them", file=sys.stderr)
        return 1
    return 0


def _connect(address: str | None):
    """Import Ray and connect: an embedded local Ray when no address is given (never a cluster
    that happens to run on this machine), else the given cluster. Returns (tune, started)."""
    if address is not None:
        check_reachable(address)  # before Ray's import: a wrong address is said in well under 1 s
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import tune

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if ray.is_initialized():  # a caller (a test, a notebook) already chose the cluster
        return tune, False
    if address is None:
        # Ray 2.59+ picks token authentication for a new local cluster (it keeps other users of
        # this machine off the embedded cluster's ports) and warns that it did on every start.
        # The README says once what it means; the choice is Ray's, only the repetition goes.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        return tune, True
    # Through Ray Client the Tuner runs on the cluster, not here: it needs our settings there.
    runtime_env = {"env_vars": RAY_ENV} if address.startswith("ray://") else None
    for attempt in itertools.count(1):
        try:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
            return tune, True
        except ConnectionError as exc:  # 'auto' with no cluster on this node, a stale address file
            message = " ".join(str(exc).split())
            if "Initialization failure from server" not in message or attempt == CLIENT_SESSION_TRIES:
                raise UserError(f"--address {address}: {message[:300]}") from None
            # The cluster's Ray Client server now and then loses the process it starts for a
            # new session (seen on CI: it exits before it serves, leaving no log); the next
            # session gets a new process.
            print(f"--address {address}: the Ray Client server failed to start a session; "
                  f"trying again ({attempt + 1}/{CLIENT_SESSION_TRIES})", file=sys.stderr, flush=True)
            ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, in one line, when nothing listens at a HOST:PORT or ray://HOST:PORT
    address: `ray.init` would retry an unreachable GCS for minutes, printing warnings."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected 'auto', HOST:PORT or ray://HOST:PORT")
    import socket

    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc})") from None


def _check_resources(resources: dict[str, float], *, autoscaling: bool) -> None:
    """Refuse a sweep that could never start here (Tune would wait forever for a GPU); on a
    cluster, whose autoscaler may add nodes, only warn."""
    import ray

    have = ray.cluster_resources()
    missing = [f"{need:g} {kind.upper()}" for kind, need in resources.items()
               if need > have.get(kind.upper(), 0)]
    if not missing:
        return
    message = (f"each trial needs {' and '.join(missing)}, but this Ray has "
               f"{have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU")
    if not autoscaling:
        raise UserError(message + "; change resources: in the spec or pass --address")
    print(f"warning: {message}; trials wait until the autoscaler adds such nodes", file=sys.stderr)


def _disconnect(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


# ---- files ---------------------------------------------------------------------------------
def _exists(uri: str) -> bool:
    """Whether ``uri`` exists; the first touch of the storage, so an unreachable one is a
    one-line user error here, before Ray starts."""
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise UserError(f"storage {uri}: cannot reach it: {' '.join(str(exc).split())[:300]}") from None


def _write_json(uri: str, body: dict[str, Any]) -> None:
    """All or nothing: written under a hidden name, then renamed (on an object store, one PUT
    and a server-side copy)."""
    fs, path = resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = Store.tmp_path(path)
    with fs.open_output_stream(tmp) as handle:
        handle.write(json.dumps(body, indent=1, sort_keys=True).encode())
    fs.move(tmp, path)


def _read_json(uri: str) -> Any:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as handle:
        return json.loads(handle.read())


def read_sweep_file(paths: SweepPaths, *, migrate: bool = False) -> dict[str, Any]:
    """The sweep's record. A sweep launched by an older psplab has it at the top level, where
    Tune rewrites it; ``migrate`` (resuming, which writes anyway) copies it to where Tune
    does not."""
    uri = paths.sweep_file if _exists(paths.sweep_file) else paths.legacy_sweep_file
    try:
        meta = _read_json(uri)
    except (OSError, ValueError) as exc:
        raise UserError(f"{uri}: cannot read the sweep's record ({exc})") from None
    if migrate and uri != paths.sweep_file:
        _write_json(paths.sweep_file, meta)
    return meta


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


# ---- status --------------------------------------------------------------------------------
def sweep_status(name: str, storage: str) -> str:
    """Trials by state, each trial's progress, restarts (naming trials that started over from
    scratch), and the first line of every error."""
    paths = sweep_paths(storage, name)
    if not _exists(paths.experiment):
        raise UserError(f"no sweep {name!r} under {paths.storage}")
    meta = read_sweep_file(paths) if paths.has_record() else {"grid": {}}
    tune_trials, snapshot_age = _tune_trials(paths)
    tune_trials = expand_packs(tune_trials)  # a packed sweep still lists one trial per grid point
    store = Store(paths.store)
    rows, restarts = {}, []
    if _exists(paths.store):
        table = store.read_trials()
        restarts = ["", *restart_report(store, table)]
        table = table.astype(object).where(table.notna(), None)  # NaN → None
        rows = {r["trial_id"]: r for r in table.to_dict("records")}

    ids = list(dict.fromkeys([*tune_trials, *rows]))
    states = Counter(tune_trials.get(t, {}).get("status", "UNKNOWN") for t in ids)
    lines = [f"sweep {name}: {len(ids)} of {meta.get('trials', len(ids))} trials started  ("
             + ", ".join(f"{state} {count}" for state, count in sorted(states.items())) + ")"]
    if snapshot_age is not None:
        lines.append(f"Tune snapshot {snapshot_age:.0f} s old; progress from the results store")
    axes = list(meta["grid"])
    width = max([12, *map(len, ids)]) + 2  # pack members' ids are longer than Tune's
    header = f"{'trial':<{width}}{'tune':<12}{'store':<11}" + "".join(f"{a:<10}" for a in axes) \
        + f"{'progress':>16}{'attempt':>9}"
    lines += ["", header]
    errors = []
    for trial_id in ids:
        tune_trial, row = tune_trials.get(trial_id, {}), rows.get(trial_id, {})
        config = tune_trial.get("config") or row
        total = (config.get("tasks") or 0) * (config.get("steps_per_task") or 0)
        done = row.get("steps_done") or 0
        progress = f"{done}/{total} {100 * done / total:3.0f}%" if total else "?"
        lines.append(f"{trial_id:<{width}}{tune_trial.get('status', '?'):<12}{row.get('status', '-'):<11}"
                     + "".join(f"{str(config.get(a)):<10}" for a in axes)
                     + f"{progress:>16}{_int(row.get('attempt')):>9}")
        error = _first_error_line(paths, tune_trial) or row.get("error")
        if error:
            errors.append(f"  {trial_id}: {error}")
    lines += restarts
    if errors:
        lines += ["", "errors:", *errors]
    return "\n".join(lines)


def restart_report(store: Store, trials) -> list[str]:
    """How often trials restarted, and which had to start again from scratch (no task
    checkpoint to resume from: their work so far was lost and redone), so that is never hidden.

    ``trials`` is the store's trials table. Its row keeps only a trial's latest attempt, so an
    earlier restart from scratch is found in the store's rows of task 0 (published or still in
    flight): a checkpoint is taken at every task's end, so only an attempt that started from
    scratch writes task 0 again.
    """
    restarted = trials[trials.restarts.fillna(0) > 0].sort_values("trial_id")
    if restarted.empty:
        return ["restarts: none"]
    scratch = [t.trial_id for t in restarted.itertuples() if _restarted_from_scratch(store, t)]
    return [f"restarts: {int(restarted.restarts.sum())} in {len(restarted)} trial(s)",
            "restarted from scratch (no checkpoint to resume from): "
            + (f"{len(scratch)} trial(s): {', '.join(scratch)}" if scratch else "none")]


def _restarted_from_scratch(store: Store, trial) -> bool:
    import pandas as pd
    import pyarrow.dataset as ds

    if pd.isna(trial.restored_from_task):  # the latest attempt found no checkpoint
        return True
    try:
        rows = store.read_steps(ds.field("task") == 0, columns=["attempt"],
                                trial_id=trial.trial_id, live=True)
    except StoreError:  # a bad file `psp fsck` names
        return False
    return int(rows.attempt.max()) >= 1 if len(rows) else False


def _restart_lines(paths: SweepPaths) -> list[str]:
    store = Store(paths.store)
    try:
        return restart_report(store, store.read_trials())
    except StoreError as exc:  # the sweep's own outcome is already said; do not hide it
        return [f"restarts: unknown, the trials table is unreadable ({exc})"]


def _tune_trials(paths: SweepPaths) -> tuple[dict[str, dict], float | None]:
    """Trials in Tune's latest experiment snapshot (pinned Ray: experiment_state-*.json)."""
    fs, root = resolve(paths.experiment)
    selector = pafs.FileSelector(root, recursive=False)
    # The latest as Tune picks it, by the timestamp in its name: a resume uploads every earlier
    # snapshot again, so their modification times say nothing.
    snapshots = sorted((i for i in fs.get_file_info(selector)
                        if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")),
                       key=lambda i: i.base_name)
    if not snapshots:
        return {}, None
    latest = snapshots[-1]
    with fs.open_input_stream(latest.path) as handle:
        state = json.loads(handle.read())
    trials = {}
    for trial_json, metadata_json in state.get("trial_data", []):
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        trials[trial["trial_id"]] = {"status": trial.get("status"), "config": trial.get("config"),
                                     "dir": trial.get("relative_logdir"),
                                     # The checkpoint a restore resumes from: the last one
                                     # reported, as Tune's checkpoint manager records it.
                                     "checkpoint": (metadata.get("last_result") or {}).get(
                                         "checkpoint_dir_name"),
                                     "error_file": metadata.get("error_filename"),
                                     "failures": metadata.get("num_failures", 0)}
    age = time.time() - latest.mtime_ns / 1e9 if latest.mtime_ns else None
    return trials, age


def _first_error_line(paths: SweepPaths, trial: dict) -> str | None:
    """Tune's error file: 'Failure # N (occurred at ...)' headers, each followed by the
    exception. Returns its first line with the exception's last line, and the file's path."""
    if not trial.get("error_file") or not trial.get("dir"):
        return None
    fs, root = resolve(paths.experiment)
    path = posixpath.join(root, trial["dir"], trial["error_file"])
    try:
        with fs.open_input_stream(path) as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1] if len(lines) > 1 else ""
    return f"{lines[0]}: {last}  ({path})"


def _int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "-"



# ---- cluster configs -----------------------------------------------------------------------
class ClusterConfigError(Exception):
    """A cluster-launcher config that `ray up` would reject; one line naming the key."""


def validate_cluster_config(path: str) -> dict[str, Any]:
    """Check a cluster config the way `ray up` does: Ray's defaults filled in, then Ray's own
    JSON schema (a private API: valid for the pinned Ray only). Returns the prepared config."""
    import yaml

    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ClusterConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ClusterConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(config, dict):
        raise ClusterConfigError(f"{path}: a cluster config is a mapping of keys")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # "setting max workers ..."

    try:
        prepared = prepare_config(config)
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        location = ".".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ClusterConfigError(f"{path}: {location}: {exc.message}") from None
    except KeyError as exc:  # prepare_config indexes required keys before the schema check
        raise ClusterConfigError(f"{path}: {exc.args[0]}: required key is missing") from None
    except (ValueError, TypeError) as exc:
        raise ClusterConfigError(f"{path}: {exc}") from None
    return prepared
