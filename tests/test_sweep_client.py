"""`psp sweep launch --address ray://HOST:PORT`: a sweep driven through Ray Client, the way a
laptop drives a cluster whose head exposes the client server (port 10001 by default). Through
Ray Client the Tuner itself runs on the cluster, so this checks more than a plain address does:
that the trainable, the store and our Tune settings all arrive there."""
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SPEC = """
name: client
dataset: mnist5k
steps_per_task: 50
eval_every: 25
grid:
  seed: [0, 1]
fixed: {psp: binary, units: 32, tasks: 3}
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
"""


@pytest.mark.timeout(600)
def test_sweep_through_ray_client_stores_every_row_once(tmp_path, ray_cluster, psp, exactly_once):
    spec = tmp_path / "client.yaml"
    spec.write_text(SPEC)
    result = psp("sweep", "launch", str(spec), "--address",
                 f"ray://127.0.0.1:{ray_cluster.client_port}",
                 "--storage", str(tmp_path / "sweeps"), "--quiet", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 finished, 0 failed" in result.stdout, result.stdout[-2000:]
    # Our settings reached the Tuner on the cluster: no per-trial CSV/JSON loggers.
    assert not list((tmp_path / "sweeps" / "client").rglob("progress.csv"))
    steps, trials = exactly_once(tmp_path / "sweeps" / "client" / "results", n_trials=2)
    assert (trials.status == "completed").all()
