"""Issue 6, item 8: the bad-input catalogue. Every bad input gets its documented exit code
(2 unless stated), ONE line naming the field, file or URI at fault, no traceback, an answer
within 1 s of the process's own work, and leaves every existing result byte for byte as it was.

"The process's own work" excludes what it must import before it can judge the input: a
baseline per import level (building psp's parser / plus pyarrow and pandas / plus torch) is
measured once per session
on this machine, and each case gets 1.5 × its baseline + 1 s; a case over that is timed once
more against a fresh baseline (load from other processes on a shared machine comes in bursts;
a hang on the network, seconds of SDK retries, fails both times).

Cases are data: add one to the list it belongs to. The sweep-spec and cluster.yaml cases of
`psp sweep` go in ORCHESTRATOR_CASES below (see the marked place).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator import faults
from orchestrator.errors import user_facing
from orchestrator.store import MANIFEST, Store, StoreError
from trainables import schema

ENV = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "RAY_USAGE_STATS_ENABLED": "0"}
UNREACHABLE_S3 = ("s3://psplab-unreachable/store?region=us-east-1&endpoint_override=127.0.0.1:9"
                  "&scheme=http&connect_timeout=1&request_timeout=1&retries=1")
PARSER = "import orchestrator.cli as cli; cli.build_parser()"  # every `psp` command does this
IMPORTS = {  # what a process must import before it can judge its input, per level
    "parser": PARSER,
    "arrow": f"{PARSER}; import orchestrator.store",
    "plots": f"{PARSER}; import analysis.plots",  # matplotlib and scipy, before --out is made
    "torch": f"{PARSER}; import orchestrator.local_run, trainables.loop",
    # a batch is judged against the task's training split: the dataset must be loaded first
    "data": f"{PARSER}; import orchestrator.local_run, trainables.loop; "
            f"trainables.loop.load_dataset('mnist5k', None)",
    "ray": f"{PARSER}; import orchestrator.launch, ray.autoscaler._private.util, jsonschema",
}


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]   # after `python -m orchestrator.cli`; {tmp} is the workspace
    names: str              # the message must contain this ({tmp} expanded)
    code: int = 2
    imports: str = "parser"
    stream: str = "stderr"  # where the one line goes: stderr for errors, stdout for fsck findings


OUT = "--out={tmp}/new.parquet"
SHORT = ("--tasks", "1", "--steps-per-task", "10", "--eval-every", "5")

CLI_CASES = [
    # ---- psp run: arguments ---------------------------------------------------------------
    Case("run-units-zero", ("run", "--units", "0", OUT), "--units"),
    Case("run-units-word", ("run", "--units", "many", OUT), "--units"),
    Case("run-units-float", ("run", "--units", "2.5", OUT), "--units"),
    Case("run-psp-unknown", ("run", "--psp", "quantum", OUT), "--psp"),
    Case("run-tasks-negative", ("run", "--tasks", "-3", OUT), "--tasks"),
    Case("run-lr-zero", ("run", "--lr", "0", OUT), "--lr"),
    Case("run-lr-word", ("run", "--lr", "fast", OUT), "--lr"),
    Case("run-eval-every-not-dividing", ("run", "--steps-per-task", "100", "--eval-every", "30", OUT),
         "eval_every"),
    Case("run-unknown-flag", ("run", "--bogus-flag", "1", OUT), "--bogus-flag"),
    Case("run-dataset-unknown", ("run", "--dataset", "imagenet", OUT), "--dataset"),
    Case("run-optimizer-unknown", ("run", "--optimizer", "lbfgs", OUT), "--optimizer"),
    Case("run-batch-size-zero", ("run", "--batch-size", "0", OUT), "--batch-size"),
    Case("run-seed-negative", ("run", "--seed", "-1", OUT), "--seed"),
    Case("run-threads-zero", ("run", "--threads", "0", OUT), "--threads"),
    Case("run-flag-without-value", ("run", OUT, "--units"), "--units"),
    Case("run-incremental-needs-cifar", ("run", "--stream", "incremental", "--dataset", "mnist", OUT),
         "incremental"),
    Case("run-out-missing", ("run", "--units", "8"), "--out"),
    Case("run-cuda-graph-on-cpu", ("run", "--cuda-graph", "--device", "cpu", OUT), "--cuda-graph"),
    Case("run-cuda-graph-learned-keys", ("run", "--cuda-graph", "--learn-context", OUT),
         "--cuda-graph"),
    # ---- psp run: files (--out is checked before torch is imported; the data after) ----------
    Case("run-out-not-parquet", ("run", *SHORT, "--out", "{tmp}/x.csv"), "{tmp}/x.csv",
         imports="arrow"),
    Case("run-out-exists", ("run", *SHORT, "--out", "{tmp}/results.parquet"),
         "{tmp}/results.parquet", imports="arrow"),
    Case("run-out-unwritable", ("run", *SHORT, "--out", "/proc/x.parquet"), "/proc",
         imports="arrow"),
    Case("run-batch-larger-than-the-data", ("run", *SHORT, "--batch-size", "4001", OUT),
         "batch_size 4001", imports="data"),
    Case("run-out-and-store", ("run", *SHORT, OUT, "--store", "{tmp}/runs"), "--store"),
    Case("run-data-dir-missing", ("run", *SHORT, "--dataset", "mnist", "--data-dir",
                                  "{tmp}/nonexistent", OUT), "{tmp}/nonexistent", imports="torch"),
    Case("run-data-dir-corrupt", ("run", *SHORT, "--dataset", "mnist", "--data-dir",
                                  "{tmp}/mnist-bad", OUT), "{tmp}/mnist-bad/", imports="torch"),
    # ---- psp fsck ---------------------------------------------------------------------------
    Case("fsck-missing-path", ("fsck", "{tmp}/nonexistent"), "{tmp}/nonexistent"),
    Case("fsck-path-is-a-file", ("fsck", "{tmp}/results.parquet"), "{tmp}/results.parquet"),
    Case("fsck-not-a-store", ("fsck", "{tmp}/empty"), "not a psplab store", imports="arrow"),
    Case("fsck-newer-manifest", ("fsck", "{tmp}/newer-store"), f"{{tmp}}/newer-store/{MANIFEST}",
         imports="arrow"),
    Case("fsck-corrupt-manifest", ("fsck", "{tmp}/bad-manifest"),
         f"corrupt: {{tmp}}/bad-manifest/{MANIFEST}", code=1, imports="arrow", stream="stdout"),
    Case("fsck-newer-file", ("fsck", "{tmp}/newer-file"),
         "schema-drift: {tmp}/newer-file/steps/t/task-000009.parquet", code=1, imports="arrow",
         stream="stdout"),
    Case("fsck-unreachable-s3", ("fsck", UNREACHABLE_S3), "psplab-unreachable", imports="arrow"),
    Case("fsck-s3-bad-timeout", ("fsck", "s3://bucket/x?region=us-east-1&connect_timeout=soon"),
         "connect_timeout", imports="arrow"),
    Case("fsck-hdfs", ("fsck", "hdfs://namenode:8020/store"), "hdfs://namenode:8020/store",
         imports="arrow"),
    Case("fsck-unknown-scheme", ("fsck", "nosuch://bucket/store"), "nosuch://bucket/store",
         imports="arrow"),
    Case("fsck-no-store-argument", ("fsck",), "store"),
    Case("fsck-unknown-flag", ("fsck", "{tmp}/store", "--fix"), "--fix"),
    # ---- psp compact ------------------------------------------------------------------------
    Case("compact-missing-path", ("compact", "{tmp}/nonexistent"), "{tmp}/nonexistent"),
    Case("compact-not-a-store", ("compact", "{tmp}/empty"), "not a psplab store", imports="arrow"),
    Case("compact-newer-manifest", ("compact", "{tmp}/newer-store"),
         f"{{tmp}}/newer-store/{MANIFEST}", imports="arrow"),
    # ---- psp ----------------------------------------------------------------------------------
    Case("no-command", (), "command"),
    Case("unknown-command", ("frobnicate",), "frobnicate"),
]

# ==== ORCHESTRATOR_CASES: the sweep-spec and cluster.yaml cases of `psp sweep` go here. =======
# Same Case shape; put the bad spec/cluster files under {tmp} from `workspace` (add a writer
# there) and name the field in `names`, e.g.
#   Case("sweep-spec-unknown-key", ("sweep", "launch", "{tmp}/bad-spec.yaml"), "unknwon_key"),
SPEC = "{tmp}/specs/"
ORCHESTRATOR_CASES = [
    # ---- psp sweep launch: the spec (validated before Ray is imported) ------------------------
    Case("spec-units-zero", ("sweep", "launch", SPEC + "units-zero.yaml"), "grid.units[0]"),
    Case("spec-psp-unknown", ("sweep", "launch", SPEC + "psp-unknown.yaml"), "grid.psp[1]"),
    Case("spec-unknown-key", ("sweep", "launch", SPEC + "unknown-key.yaml"), "unknwon_key"),
    Case("spec-tasks-negative", ("sweep", "launch", SPEC + "tasks-negative.yaml"), "fixed.tasks"),
    Case("spec-empty-axis", ("sweep", "launch", SPEC + "empty-axis.yaml"), "grid.units"),
    Case("spec-wrong-type", ("sweep", "launch", SPEC + "wrong-type.yaml"), "max_concurrent"),
    Case("spec-bad-yaml", ("sweep", "launch", SPEC + "bad-yaml.yaml"), SPEC + "bad-yaml.yaml:"),
    Case("spec-missing", ("sweep", "launch", SPEC + "nonexistent.yaml"), SPEC + "nonexistent.yaml"),
    Case("spec-validate-bad-resources", ("sweep", "validate", SPEC + "negative-cpu.yaml"),
         "resources.cpu"),
    # ---- psp sweep: names and storage -----------------------------------------------------------
    Case("launch-onto-existing-sweep", ("sweep", "launch", SPEC + "good.yaml", "--storage",
                                        "{tmp}/sweeps"), "psp sweep resume demo", imports="arrow"),
    Case("launch-bad-name", ("sweep", "launch", SPEC + "good.yaml", "--name", "../escape"),
         "--name"),
    Case("launch-unreachable-storage", ("sweep", "launch", SPEC + "good.yaml", "--storage",
                                        UNREACHABLE_S3), "psplab-unreachable/store/demo?region=",
         imports="arrow"),  # the sweep's directory goes inside the URI's path, before its options
    Case("launch-address-refused", ("sweep", "launch", SPEC + "good.yaml", "--storage",
                                    "{tmp}/new-sweeps", "--address", "127.0.0.1:1"),
         "--address 127.0.0.1:1", imports="arrow"),  # ray.init would retry it for minutes
    Case("launch-address-malformed", ("sweep", "launch", SPEC + "good.yaml", "--storage",
                                      "{tmp}/new-sweeps", "--address", "headnode"),
         "--address headnode", imports="arrow"),
    Case("status-unknown-sweep", ("sweep", "status", "nosuch", "--storage", "{tmp}/sweeps"),
         "nosuch", imports="arrow"),
    Case("resume-unknown-sweep", ("sweep", "resume", "nosuch", "--storage", "{tmp}/sweeps"),
         "nosuch", imports="arrow"),
    # ---- psp cluster validate: a cluster.yaml that `ray up` would reject -------------------------
    Case("cluster-missing-provider", ("cluster", "validate", "{tmp}/cluster-no-provider.yaml"),
         "provider", imports="ray"),
    Case("cluster-bad-max-workers", ("cluster", "validate", "{tmp}/cluster-bad-workers.yaml"),
         "max_workers", imports="ray"),
    Case("cluster-missing-file", ("cluster", "validate", "{tmp}/nonexistent.yaml"),
         "{tmp}/nonexistent.yaml"),
    # ---- psp results / plots / data -------------------------------------------------------------
    Case("results-missing-store", ("results", "{tmp}/nonexistent"), "{tmp}/nonexistent"),
    Case("results-bad-where", ("results", "{tmp}/store", "--where", "units >>> 3"), "--where",
         imports="arrow"),
    Case("plots-missing-store", ("plots", "{tmp}/nonexistent", "--out", "{tmp}/figures"),
         "{tmp}/nonexistent"),
    Case("plots-unwritable-out", ("plots", "{tmp}/store", "--out", "/proc/figures"),
         "/proc/figures", imports="plots"),
    Case("data-download-unknown", ("data", "download", "imagenet"), "imagenet"),
    # ---- psp capacity ---------------------------------------------------------------------------
    Case("capacity-backtest-missing-store", ("capacity", "backtest", "{tmp}/nonexistent"),
         "{tmp}/nonexistent"),
    Case("capacity-backtest-fit-tasks-one", ("capacity", "backtest", "{tmp}/store",
                                             "--fit-tasks", "1"), "--fit-tasks 1"),
    Case("capacity-backtest-fit-tasks-all", ("capacity", "backtest", "{tmp}/store",
                                             "--fit-tasks", "1000"), "--fit-tasks 1000",
         imports="arrow"),
    Case("capacity-backtest-bad-where", ("capacity", "backtest", "{tmp}/store", "--where",
                                         "units >>> 3"), "--where", imports="arrow"),
    Case("capacity-backtest-bad-family", ("capacity", "backtest", "{tmp}/store", "--family",
                                          "cubic"), "--family"),
    Case("capacity-report-no-out", ("capacity", "report", "{tmp}/store"), "--out"),
    Case("capacity-backtest-unwritable-out", ("capacity", "backtest", "{tmp}/store", "--out",
                                              "/proc/backtest"), "--out /proc/backtest"),
    Case("capacity-report-unwritable-out", ("capacity", "report", "{tmp}/store", "--out",
                                            "/proc/study"), "--out /proc/study"),
    Case("capacity-report-bad-seeds", ("capacity", "report", "{tmp}/store", "--out",
                                       "{tmp}/study", "--dev-seeds", "zero"), "--dev-seeds"),
]


def write_orchestrator_inputs(root: Path) -> None:
    """Bad sweep specs (each one mistake in the shipped demo spec), an existing sweep that a
    launch must not overwrite, and two cluster configs that `ray up` would reject."""
    good = (Path(__file__).parents[1] / "sweeps" / "demo.yaml").read_text()
    edits = {
        "good": [],
        "units-zero": [("units: [64, 256]", "units: [0, 256]")],
        "psp-unknown": [("psp: [none, binary, complex]", "psp: [none, quantum]")],
        "unknown-key": [("name: demo", "name: demo\nunknwon_key: 1")],
        "tasks-negative": [("tasks: 10", "tasks: -3")],
        "empty-axis": [("units: [64, 256]", "units: []")],
        "wrong-type": [("max_concurrent: 2", "max_concurrent: lots")],
        "negative-cpu": [("{cpu: 1, gpu: 0}", "{cpu: -1, gpu: 0}")],
    }
    specs = root / "specs"
    specs.mkdir()
    for name, changes in edits.items():
        text = good
        for old, new in changes:
            assert old in text, (name, old)  # the demo spec changed: update the edit
            text = text.replace(old, new)
        (specs / f"{name}.yaml").write_text(text)
    (specs / "bad-yaml.yaml").write_text("name: x\ngrid: [\n")
    existing = make_store(root / "sweeps" / "demo" / "results")
    (Path(existing.root).parent / "psplab").mkdir()
    (Path(existing.root).parent / "psplab" / "sweep.json").write_text('{"name": "demo"}')
    (root / "cluster-no-provider.yaml").write_text("cluster_name: x\nmax_workers: 2\n")
    (root / "cluster-bad-workers.yaml").write_text(
        "cluster_name: x\nmax_workers: -1\nprovider: {type: aws, region: us-west-2}\n")

ALL_CASES = CLI_CASES + ORCHESTRATOR_CASES


# ---- the workspace: existing results that no bad input may touch ------------------------------
def make_store(root: Path) -> Store:
    store = Store(str(root))
    store.initialise()
    store.write_trial({"trial_id": "t", "attempt": 0, "status": "completed"})
    for task in range(2):
        store.write_chunk("t", task, faults.synthetic_chunk("t", task, 0))
    store.publish("t")
    return store


@pytest.fixture
def workspace(tmp_path) -> Path:
    make_store(tmp_path / "store")
    pq.write_table(faults.synthetic_chunk("t", 0, 0), tmp_path / "results.parquet")
    (tmp_path / "empty").mkdir()
    newer = make_store(tmp_path / "newer-store")
    json.dump({"schema_version": 99}, open(newer.path(MANIFEST), "w"))
    bad_manifest = make_store(tmp_path / "bad-manifest")
    open(bad_manifest.path(MANIFEST), "w").write("{ half a manif")
    newer_file = make_store(tmp_path / "newer-file")
    table = faults.synthetic_chunk("t", 9, 0)
    pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: b"99"}),
                   newer_file.chunk_path("t", 9))
    bad_mnist = tmp_path / "mnist-bad"
    bad_mnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad_mnist / name).write_bytes(b"\x00\x00\x08\x03 not an image file")
    write_orchestrator_inputs(tmp_path)
    return tmp_path


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


_BASELINES: dict[str, float] = {}


def baseline(level: str, *, fresh: bool = False) -> float:
    """Seconds this machine takes, now, to start Python and import what ``level`` needs."""
    if fresh or level not in _BASELINES:
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", IMPORTS[level]], check=True, env=ENV,
                       capture_output=True)
        _BASELINES[level] = time.monotonic() - started
    return _BASELINES[level]


def run_timed(argv: list[str], level: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """(result, seconds taken, seconds allowed). A slow run is timed once more against a fresh
    baseline, so a burst of load from other processes is not blamed on the input's handling."""
    for fresh in (False, True):
        allowed = 1.5 * baseline(level, fresh=fresh) + 1.0
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv],
                                capture_output=True, text=True, env=ENV, timeout=60)
        took = time.monotonic() - started
        if took <= allowed:
            break
    return result, took, allowed


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_bad_cli_input(workspace, case):
    expand = lambda text: text.replace("{tmp}", str(workspace))  # noqa: E731
    before = tree_digest(workspace)
    result, took, allowed = run_timed([expand(arg) for arg in case.argv], case.imports)

    assert result.returncode == case.code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    if case.stream == "stderr":
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expand(case.names) in lines[0], lines[0]
    else:
        assert result.stderr == ""
        assert sum(expand(case.names) in line for line in result.stdout.splitlines()) == 1, \
            result.stdout
    assert took <= allowed, f"{took:.2f} s > {allowed:.2f} s"
    assert tree_digest(workspace) == before, "a bad input changed existing results"


# ---- the same inputs through the Store API (what `psp sweep` and analysis code call) ----------
def newer_manifest(root: Path):
    store = make_store(root)
    json.dump({"schema_version": 99}, open(store.path(MANIFEST), "w"))
    return store.read_steps, MANIFEST


def newer_manifest_initialise(root: Path):
    store = make_store(root)
    json.dump({"schema_version": 99}, open(store.path(MANIFEST), "w"))
    return store.initialise, MANIFEST


def newer_file(root: Path):
    store = make_store(root)
    table = faults.synthetic_chunk("t", 9, 0)
    pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: b"99"}),
                   store.chunk_path("t", 9))
    return store.read_steps, store.chunk_path("t", 9)


def corrupt_chunk(root: Path):
    store = make_store(root)
    open(store.chunk_path("t", 5), "wb").write(b"PAR1 and then nothing useful")
    return store.read_steps, store.chunk_path("t", 5)


def unreachable_s3(root: Path):
    make_store(root)
    return (lambda: Store(UNREACHABLE_S3).read_steps()), "psplab-unreachable"


def unsupported_scheme(root: Path):
    make_store(root)
    return (lambda: Store("hdfs://namenode:8020/store")), "hdfs://namenode:8020/store"


def escaping_trial_id(root: Path):
    store = make_store(root)
    return (lambda: store.write_chunk("../../etc", 0, faults.synthetic_chunk("t", 0, 0))), "../../etc"


STORE_API_CASES = [newer_manifest, newer_manifest_initialise, newer_file, corrupt_chunk,
                   unreachable_s3, unsupported_scheme, escaping_trial_id]


@pytest.mark.parametrize("setup", STORE_API_CASES, ids=[f.__name__ for f in STORE_API_CASES])
def test_bad_store_input(tmp_path, monkeypatch, setup):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    action, named = setup(tmp_path)
    before = tree_digest(tmp_path)
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        action()
    assert time.monotonic() - started < 1.0
    message = user_facing(raised.value)  # what every `psp` command prints, with exit code 2
    assert message is not None and "\n" not in str(raised.value) and named in message, message
    assert tree_digest(tmp_path) == before


def test_the_catalogue_is_big_enough():
    assert len(ALL_CASES) + len(STORE_API_CASES) >= 30
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES)
