"""The `csi-py` command: `serve` runs the driver; `demo` shows a volume's whole life;
`volume` and `info` talk to a running driver."""

from __future__ import annotations

import argparse
import logging
import sys

from csi_py import __version__
from csi_py.config import (
    DEFAULT_DRIVER_NAME,
    SUPPORTED_FILESYSTEMS,
    Config,
    ConfigError,
    default_node_id,
    parse_size,
)

DEFAULT_ENDPOINT = "unix:///run/csi-py/csi.sock"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csi-py", description="A CSI driver serving loop-device-backed volumes."
    )
    parser.add_argument("--version", action="version", version=f"csi-py {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the driver (Identity, Controller and Node)")
    serve.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                       help="unix socket to serve on (default %(default)s)")
    serve.add_argument("--node-id", default=default_node_id(),
                       help="this node's name (default: $CSI_NODE_ID, $KUBE_NODE_NAME or hostname)")
    serve.add_argument("--pool", required=True, help="directory holding backing files and catalog")
    serve.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    serve.add_argument("--filesystems", default=",".join(SUPPORTED_FILESYSTEMS),
                       help="filesystems offered, comma-separated (default %(default)s)")
    serve.add_argument("--default-fs-type", default="ext4")
    serve.add_argument("--default-size", type=_size, default="1Gi",
                       help="size of a volume created without a capacity range")
    serve.add_argument("--size-granularity", type=_size, default="1Mi",
                       help="volume sizes are rounded up to a multiple of this")
    serve.add_argument("--default-provisioning", choices=("thin", "thick"), default="thin")
    serve.add_argument("--thin-overcommit", type=float, default=10.0,
                       help="thin volumes may promise this many times the pool size in total")
    serve.add_argument("--reserve", type=_size, default="256Mi",
                       help="pool space never handed to volumes")
    serve.add_argument("--max-volumes-per-node", type=int, default=0,
                       help="attachment limit reported to Kubernetes (0: none)")
    serve.add_argument("--no-direct-io", action="store_true",
                       help="attach loop devices with buffered I/O instead of direct I/O")
    serve.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    serve.add_argument("--expansion", choices=("controller", "node"), default="controller",
                       help="who grows a volume's file: ControllerExpandVolume (default) or"
                            " NodeExpandVolume on the volume's node (for the distributed layout,"
                            " where the resizer may run on another node)")
    serve.add_argument("--metrics-address", default="",
                       help="serve Prometheus metrics at http://ADDRESS/metrics, e.g. :9810"
                            " (default: off)")
    serve.add_argument("--log-level", default="INFO",
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    demo = sub.add_parser("demo", help="walk one volume through its whole life, then clean up")
    demo.add_argument("--fs-type", default="ext4", choices=SUPPORTED_FILESYSTEMS)
    demo.add_argument("--block", action="store_true", help="demo a raw block volume instead")
    demo.add_argument("--size", type=_size, default="512Mi")

    for name, helptext in (("volume", "manage volumes on a running driver"),):
        vol = sub.add_parser(name, help=helptext)
        vol.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
        vsub = vol.add_subparsers(dest="action", required=True)
        create = vsub.add_parser("create", help="create a volume (e.g. for a static PV)")
        create.add_argument("name")
        create.add_argument("--size", type=_size, default="1Gi")
        create.add_argument("--fs-type", default="", help="ext4, xfs or btrfs (default: driver's)")
        create.add_argument("--block", action="store_true", help="request raw block access")
        create.add_argument("--thick", action="store_true", help="allocate all space now")
        vsub.add_parser("list", help="list volumes")
        delete = vsub.add_parser("delete", help="delete a volume by id")
        delete.add_argument("volume_id")
        for verb, source_help in (("restore", "snapshot id to restore"),
                                  ("clone", "volume id to clone")):
            made = vsub.add_parser(verb, help=f"create a volume from a {verb} source")
            made.add_argument("source", help=source_help)
            made.add_argument("name")
            made.add_argument("--size", type=_size, default=0,
                              help="at least the source's size (default: the source's)")
            made.add_argument("--block", action="store_true", help="request raw block access")

    snap = sub.add_parser("snapshot", help="manage snapshots on a running driver")
    snap.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    ssub = snap.add_subparsers(dest="action", required=True)
    screate = ssub.add_parser("create", help="snapshot a volume (shows a copy's progress)")
    screate.add_argument("volume_id")
    screate.add_argument("name")
    slist = ssub.add_parser("list", help="list snapshots")
    slist.add_argument("--volume", default="", help="only snapshots of this volume id")
    sdelete = ssub.add_parser("delete", help="delete a snapshot by id")
    sdelete.add_argument("snapshot_id")

    pool = sub.add_parser("pool", help="check a pool's catalog against its self-describing"
                          " images and the kernel, or rebuild it from them (on the node)")
    pool.add_argument("action", choices=("check", "rebuild"))
    pool.add_argument("--pool", required=True, help="the driver's --pool directory")

    info = sub.add_parser("info", help="print a running driver's identity and capacity")
    info.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        endpoint=args.endpoint,
        node_id=args.node_id,
        pool=args.pool,
        driver_name=args.driver_name,
        default_fs_type=args.default_fs_type,
        filesystems=tuple(f.strip() for f in args.filesystems.split(",") if f.strip()),
        default_size_bytes=args.default_size,
        size_granularity_bytes=args.size_granularity,
        default_provisioning=args.default_provisioning,
        thin_overcommit=args.thin_overcommit,
        reserve_bytes=args.reserve,
        max_volumes_per_node=args.max_volumes_per_node,
        direct_io=not args.no_direct_io,
        grpc_workers=args.workers,
        metrics_address=args.metrics_address,
        expansion=args.expansion,
        log_level=args.log_level,
    ).validated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from csi_py.demo import run_demo

        return run_demo(fs_type=args.fs_type, block=args.block, size=args.size)
    if args.command == "pool":
        from csi_py import pool_cli

        return pool_cli.run(args.pool, args.action)
    from csi_py import commands

    if args.command == "volume":
        return commands.volume(args)
    if args.command == "snapshot":
        return commands.snapshot(args)
    if args.command == "info":
        return commands.info(args)
    return 2


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"csi-py: {exc}", file=sys.stderr)
        return 2
    from csi_py.core.driver import Driver
    from csi_py.core.pool import PoolError
    from csi_py.linux import real_host
    from csi_py.server import Server, SocketInUse
    from csi_py.state.catalog import CatalogError

    try:
        server = Server(Driver(config, real_host()))
        server.serve_forever()
    except (PoolError, CatalogError, SocketInUse, OSError) as exc:
        # Known conditions (a bad pool, an unusable catalog, a socket in use, a pool
        # that fails with EIO) get one line naming the path and the cause.
        print(f"csi-py: {exc}", file=sys.stderr)
        return 1
    return 0
