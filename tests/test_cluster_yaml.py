"""cluster.yaml passes Ray's own cluster-config schema (with Ray's defaults filled in, as
`ray up` does), keeps the dashboard off the network, and installs psplab; a bad config is one
line naming the key."""
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.launch import ClusterConfigError, validate_cluster_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster.yaml"


def test_cluster_yaml_is_valid_for_ray():
    prepared = validate_cluster_config(str(CLUSTER))
    assert prepared["provider"]["type"] == "aws"
    workers = prepared["available_node_types"]["ray.worker.gpu"]
    assert workers["resources"]["GPU"] >= 1 and workers["max_workers"] >= 1
    assert prepared["available_node_types"][prepared["head_node_type"]]["resources"]["CPU"] == 0


def test_cluster_yaml_installs_psplab_and_keeps_the_dashboard_local():
    config = yaml.safe_load(CLUSTER.read_text())
    assert any("psplab" in command for command in config["setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        assert (rule["FromPort"], rule["ToPort"]) == (22, 22)  # SSH only, nothing else open


def test_every_key_of_cluster_yaml_is_commented():
    """Each top-level key has a comment line right above it."""
    lines = CLUSTER.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")) and ":" in line:
            assert lines[i - 1].startswith("#"), f"line {i + 1}: {line!r} has no comment above it"


@pytest.mark.parametrize("edit, named", [
    (lambda c: c.update(max_workers="many"), "max_workers"),
    (lambda c: c.update(bogus_key=1), "bogus_key"),
    (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    (lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_workers="two"), "min_workers"),
    (lambda c: c.pop("provider"), "provider"),
])
def test_bad_cluster_yaml_is_one_line_naming_the_key(tmp_path, capsys, edit, named):
    config = yaml.safe_load(CLUSTER.read_text())
    edit(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ClusterConfigError, match=named):
        validate_cluster_config(str(path))
    assert cli.main(["cluster", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and str(path) in err[0]


def test_cluster_yaml_that_is_not_yaml(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster_name: [unclosed\n")
    with pytest.raises(ClusterConfigError, match=f"{path}:\\d+:\\d+: invalid YAML"):
        validate_cluster_config(str(path))
