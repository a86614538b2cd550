"""Unit tests of configuration parsing and validation."""

import pytest

from csi_py.cli import build_parser, config_from_args
from csi_py.config import Config, ConfigError, format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096), ("1Ki", 1024), ("512Mi", 512 << 20), ("10Gi", 10 << 30), ("1G", 10**9),
    ("2Ti", 2 << 40), ("1.5Gi", 3 << 29), ("1Pi", 1 << 50), ("2Ei", 2 << 60), ("1k", 1000),
    ("1M", 10**6), ("3E", 3 * 10**18), ("1e9", 10**9), ("1.5e3", 1500), (".5Ki", 512),
    ("0.1", 1), ("1.0000001k", 1001), ("0", 0), (" 64Mi ", 64 << 20), ("+1Ki", 1024),
])
def test_parse_size_reads_kubernetes_quantities(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,says", [
    ("", "not a size"), ("-1", "negative"), ("ten", "not a size"), ("1Xi", "not a size"),
    ("1gi", "case-sensitive"), ("2TiB", "not a size"), ("1K", "not a size"),
    ("100m", "milli"), ("5n", "milli, micro, nano"), ("9e999", "larger than any pool"),
    ("1e300", "larger than any pool"), ("1" * 41, "not a size"),
])
def test_parse_size_refuses_with_a_reason(text, says):
    with pytest.raises(ConfigError, match=says):
        parse_size(text)


@pytest.mark.parametrize("size,text", [
    (0, "0"), (512, "512"), (1024, "1Ki"), (16 << 20, "16Mi"), (3 << 29, "1.5Gi"),
    (2702847246336, "2.5Ti"), (1 << 60, "1Ei"),
])
def test_format_size_is_short_and_binary(size, text):
    assert format_size(size) == text


def base(**kw):
    values = dict(endpoint="unix:///tmp/x.sock", node_id="n1", pool="/tmp/pool")
    values.update(kw)
    return Config(**values)


def test_valid_config_passes_and_derives_socket_and_topology():
    cfg = base().validated()
    assert cfg.socket_path == "/tmp/x.sock"
    assert cfg.topology_key == "topology.loop.csi-py.io/node"


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"endpoint": "tcp://1.2.3.4:5"}, "--endpoint"),
        ({"node_id": ""}, "--node-id"),
        ({"driver_name": "Bad_Name"}, "--driver-name"),
        ({"pool": "relative"}, "--pool"),
        ({"filesystems": ("ext4", "zfs")}, "--filesystems"),
        ({"default_fs_type": "xfs", "filesystems": ("ext4",)}, "--default-fs-type"),
        ({"default_provisioning": "fat"}, "--default-provisioning"),
        ({"size_granularity_bytes": 1000}, "--size-granularity"),
        ({"thin_overcommit": 0.5}, "--thin-overcommit"),
        ({"max_volumes_per_node": -1}, "--max-volumes-per-node"),
    ],
)
def test_invalid_config_names_the_flag(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        base(**changes).validated()


def test_cli_flags_build_a_config():
    args = build_parser().parse_args(
        ["serve", "--endpoint", "unix:///run/x.sock", "--node-id", "n", "--pool", "/p",
         "--filesystems", "ext4,xfs", "--default-size", "2Gi", "--max-volumes-per-node", "7"]
    )
    cfg = config_from_args(args)
    assert cfg.filesystems == ("ext4", "xfs")
    assert cfg.default_size_bytes == 2 << 30
    assert cfg.max_volumes_per_node == 7
