"""The `csi-py` command: `serve` runs the driver; `demo` shows a volume's whole life;
`volume`, `snapshot` and `info` talk to a running driver.

Each command is one `_add_*` function that builds its parser and sets `handler`; a new
command needs one more such function and one line in build_parser."""

from __future__ import annotations

import argparse
import sys
import unicodedata
from collections.abc import Callable
from typing import Any

from csi_py import __version__
from csi_py.config import (
    DEFAULT_DRIVER_NAME,
    DEFAULT_ENDPOINT,
    SUPPORTED_FILESYSTEMS,
    Config,
    ConfigError,
    default_endpoint,
    default_node_id,
    endpoint_path,
    parse_size,
)
from csi_py.logs import LOG_FORMATS
from csi_py.output import FORMATS

ENDPOINT_HELP = ("the driver's CSI socket (default: $CSI_ENDPOINT, else"
                 f" {DEFAULT_ENDPOINT}); accepted before or after the subcommand")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_size(text: str) -> int:
    size = _size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a volume needs a size above 0")
    return size


def _name(text: str) -> str:
    """A volume or snapshot name: printable, because it appears in tables and logs."""
    if not text:
        raise argparse.ArgumentTypeError("a name cannot be empty")
    for char in text:
        if unicodedata.category(char) == "Cc":
            raise argparse.ArgumentTypeError(
                f"{text!r} contains the control character U+{ord(char):04X}; names must be"
                " printable"
            )
    return text


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every command takes, wherever they appear on the line. SUPPRESS keeps a
    subcommand from overwriting a value given before it."""
    parser.add_argument("--endpoint", default=argparse.SUPPRESS, metavar="URL",
                        help=ENDPOINT_HELP)


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=FORMATS, default="",
                        help="json or yaml for scripts, wide for more columns"
                             " (default: a table)")


def _leaf(sub: Any, name: str, helptext: str, handler: Callable[..., int]
          ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext,
                                                     description=helptext)
    _common(parser)
    parser.set_defaults(handler=handler)
    return parser


def _group(sub: Any, name: str, helptext: str) -> Any:
    """A command with actions of its own (``volume create``): the subparsers that
    take them."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=helptext,
                                                     description=helptext)
    _common(parser)
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csi-py", description="A CSI driver serving loop-device-backed volumes.",
        epilog="examples:\n  csi-py volume list\n  csi-py volume create data --size 1.5Gi"
               "\n  csi-py snapshot create data data-snap\n  csi-py demo --fs-type xfs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"csi-py {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_demo(sub)
    _add_volume(sub)
    _add_snapshot(sub)
    _add_pool(sub)
    _output(_leaf(sub, "info", "print a running driver's identity and capacity",
                  _client("info")))
    return parser


def _add_serve(sub: Any) -> None:
    serve = _leaf(sub, "serve", "run the driver (Identity, Controller and Node)", _serve)
    serve.add_argument("--node-id", default=default_node_id(),
                       help="this node's name (default: $CSI_NODE_ID, $KUBE_NODE_NAME or hostname)")
    serve.add_argument("--pool", required=True, help="directory holding backing files and catalog")
    serve.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME,
                       help="the CSI driver name Kubernetes knows it by (default %(default)s)")
    serve.add_argument("--filesystems", default=",".join(SUPPORTED_FILESYSTEMS),
                       help="filesystems offered, comma-separated (default %(default)s)")
    serve.add_argument("--default-fs-type", default="ext4",
                       help="filesystem of a volume whose request names none"
                            " (default %(default)s)")
    serve.add_argument("--default-size", type=_size, default="1Gi",
                       help="size of a volume created without a capacity range (default 1Gi)")
    serve.add_argument("--size-granularity", type=_size, default="1Mi",
                       help="volume sizes are rounded up to a multiple of this (default 1Mi)")
    serve.add_argument("--default-provisioning", choices=("thin", "thick"), default="thin",
                       help="thin (sparse files, allocated as written) or thick (allocated"
                            " at creation) when a StorageClass names neither"
                            " (default %(default)s)")
    serve.add_argument("--thin-overcommit", type=float, default=10.0,
                       help="thin volumes may promise this many times the pool size in total"
                            " (default %(default)s)")
    serve.add_argument("--reserve", type=_size, default="256Mi",
                       help="pool space never handed to volumes (default 256Mi)")
    serve.add_argument("--max-volumes-per-node", type=int, default=0,
                       help="attachment limit reported to Kubernetes (0: none)")
    serve.add_argument("--no-direct-io", action="store_true",
                       help="attach loop devices with buffered I/O instead of direct I/O")
    serve.add_argument("--workers", type=int, default=16,
                       help="gRPC worker threads (default %(default)s)")
    serve.add_argument("--expansion", choices=("controller", "node"), default="controller",
                       help="who grows a volume's file: ControllerExpandVolume (default) or"
                            " NodeExpandVolume on the volume's node (for the distributed layout,"
                            " where the resizer may run on another node)")
    serve.add_argument("--metrics-address", default="",
                       help="serve Prometheus metrics at http://ADDRESS/metrics, e.g. :9810"
                            " (default: off)")
    serve.add_argument("--log-level", default="INFO",
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                       help="least severe log level written to stderr (default %(default)s)")
    serve.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                       help="text (one readable line per event) or json (one JSON object per"
                            " line, klog's field names) (default %(default)s)")


def _add_demo(sub: Any) -> None:
    demo = _leaf(sub, "demo", "walk one volume through its whole life, then clean up", _demo)
    demo.add_argument("--fs-type", default="ext4", choices=SUPPORTED_FILESYSTEMS,
                      help="filesystem of the demo volume (default %(default)s)")
    demo.add_argument("--block", action="store_true", help="demo a raw block volume instead")
    demo.add_argument("--size", type=_positive_size, default="512Mi",
                      help="size of the demo volume, a Kubernetes quantity (default 512Mi)")


def _add_volume(sub: Any) -> None:
    vsub = _group(sub, "volume", "manage volumes on a running driver")
    create = _leaf(vsub, "create", "create a volume (e.g. for a static PV)",
                   _client("volume_create"))
    create.add_argument("name", type=_name, help="the volume's name (unique on the driver)")
    create.add_argument("--size", type=_positive_size, default="1Gi",
                        help="a Kubernetes quantity: 1.5Gi, 512Mi, 10G (default 1Gi); raised"
                             " to the filesystem's minimum when smaller, with a note")
    create.add_argument("--fs-type", default="", choices=SUPPORTED_FILESYSTEMS,
                        help="ext4, xfs or btrfs (default: the driver's)")
    create.add_argument("--block", action="store_true", help="request raw block access")
    create.add_argument("--thick", action="store_true", help="allocate all space now")
    _output(create)
    listing = _leaf(vsub, "list", "list volumes", _client("volume_list"))
    _output(listing)
    get = _leaf(vsub, "get", "show one volume", _client("volume_get"))
    get.add_argument("volume", help="the volume's name or id")
    _output(get)
    delete = _leaf(vsub, "delete", "delete a volume by name or id",
                   _client("volume_delete"))
    delete.add_argument("volume", help="the volume's name or id")
    delete.add_argument("--ignore-not-found", action="store_true",
                        help="succeed quietly when there is no such volume (for scripts)")
    for verb, source_help in (("restore", "id of the snapshot to restore"),
                              ("clone", "name or id of the volume to clone")):
        made = _leaf(vsub, verb, f"create a volume from a {verb} source",
                     _client("volume_copy"))
        made.add_argument("source", help=source_help)
        made.add_argument("name", type=_name, help="the new volume's name")
        made.add_argument("--size", type=_positive_size, default=None,
                          help="at least the source's size (default: the source's)")
        made.add_argument("--block", action="store_true", help="request raw block access")
        _output(made)


def _add_snapshot(sub: Any) -> None:
    ssub = _group(sub, "snapshot", "manage snapshots on a running driver")
    screate = _leaf(ssub, "create", "snapshot a volume (shows a copy's progress)",
                    _client("snapshot_create"))
    screate.add_argument("volume", help="name or id of the volume to snapshot")
    screate.add_argument("name", type=_name, help="the snapshot's name (unique on the driver)")
    _output(screate)
    slist = _leaf(ssub, "list", "list snapshots", _client("snapshot_list"))
    slist.add_argument("--volume", default="", help="only snapshots of this volume (name or id)")
    _output(slist)
    sdelete = _leaf(ssub, "delete", "delete a snapshot by id", _client("snapshot_delete"))
    sdelete.add_argument("snapshot_id", help="the snapshot's id (snapshot list shows them)")
    sdelete.add_argument("--ignore-not-found", action="store_true",
                         help="succeed quietly when there is no such snapshot (for scripts)")


def _add_pool(sub: Any) -> None:
    pool = _leaf(sub, "pool", "check a pool's catalog against its self-describing images and"
                 " the kernel, or rebuild it from them (on the node, driver stopped)", _pool)
    pool.add_argument("action", choices=("check", "rebuild"),
                      help="check: report only; rebuild: repair the catalog")
    pool.add_argument("--pool", required=True, help="the driver's --pool directory")


def _pool(args: argparse.Namespace) -> int:
    from csi_py import pool_cli

    return pool_cli.run(args.pool, args.action)


def _client(action: str) -> Callable[[argparse.Namespace], int]:
    """A handler that runs commands.`action` against the driver at --endpoint. The
    commands module (the CSI client and the tables) is imported only when one runs:
    `serve` does not pay for it at start-up."""
    def handler(args: argparse.Namespace) -> int:
        from csi_py import commands

        return commands.run(getattr(commands, action), args)
    return handler


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
    if not hasattr(args, "endpoint"):
        args.endpoint = default_endpoint()
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _demo(args: argparse.Namespace) -> int:
    from csi_py.demo import run_demo

    return run_demo(fs_type=args.fs_type, block=args.block, size=args.size)


def _serve(args: argparse.Namespace) -> int:
    from csi_py import logs

    logs.setup(args.log_level, args.log_format)
    try:
        # A relative unix://x.sock is taken from the current directory, as clients do.
        args.endpoint = "unix://" + endpoint_path(args.endpoint)
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"csi-py: {exc}", file=sys.stderr)
        return 2
    from csi_py.core.driver import Driver
    from csi_py.core.pool import PoolError
    from csi_py.linux import real_host
    from csi_py.server import Server, SocketInUse, check_socket_free
    from csi_py.state.errors import CatalogError

    try:
        # Before the pool is opened: a refused start must leave everything as it was.
        check_socket_free(config.socket_path)
        server = Server(Driver(config, real_host()))
        server.serve_forever()
    except (PoolError, CatalogError, SocketInUse, OSError) as exc:
        # Known conditions (a bad pool, an unusable catalog, a socket in use, a pool
        # that fails with EIO) get one line naming the path and the cause.
        print(f"csi-py: {exc}", file=sys.stderr)
        return 1
    return 0
