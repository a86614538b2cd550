"""Checks on untrusted request fields: ids, names, paths, sizes, maps and mount flags.

Everything here is pure (no I/O except `check_no_symlink`, which asks linux.targets
whether a path is or runs through a symlink) and
raises InvalidArgument with a message that names the field and what was wrong.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable

from csi_py.domain.errors import InvalidArgument
from csi_py.domain.limits import MAX_MAP_BYTES, MAX_STRING_BYTES
from csi_py.linux import files, targets

MAX_PATH_BYTES = 4096
# Linux's limit on one path component (NAME_MAX).
NAME_MAX = 255

_VOLUME_ID = re.compile(r"^vol-[0-9a-f]{32}$")
_GROUP_ID = re.compile(r"^group-[0-9a-f]{32}$")


def new_volume_id() -> str:
    """A fresh volume id: `vol-` and 32 hex digits. Safe to use as a file name."""
    return "vol-" + uuid.uuid4().hex


def new_group_id() -> str:
    """A fresh group snapshot id: `group-` and 32 hex digits."""
    return "group-" + uuid.uuid4().hex


def is_group_id(value: str) -> bool:
    return bool(_GROUP_ID.match(value))


def is_volume_id(value: str) -> bool:
    """True when `value` has the shape of an id we hand out. Anything else cannot name
    one of our volumes, so it is never turned into a path."""
    return bool(_VOLUME_ID.match(value))


def require(value: str, field: str) -> str:
    """Return `value`, or raise InvalidArgument when it is empty."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    return value


# The characters the spec bans from CreateVolumeRequest.name: U+0000-U+0008, U+000B,
# U+000C, U+000E-U+001F, U+007F-U+009F (control characters other than tab, LF and CR).
_BANNED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_string(value: str, field: str, *, limit: int = MAX_STRING_BYTES) -> str:
    """A non-empty string of at most `limit` UTF-8 bytes without the control characters
    the CSI spec bans from names (tab, LF and CR are allowed)."""
    require(value, field)
    if len(value.encode()) > limit:
        raise InvalidArgument(f"{field} is {len(value.encode())} bytes; the limit is {limit}")
    banned = _BANNED.search(value)
    if banned:
        raise InvalidArgument(
            f"{field} contains the control character U+{ord(banned.group()):04X}"
        )
    return value


def check_name(value: str, field: str) -> str:
    """check_string, and no tab, LF or CR either: a name is echoed in log lines and by the
    CLI, where a line break would forge or split a line. Kubernetes never makes such names.
    Raises InvalidArgument."""
    check_string(value, field)
    for char in ("\n", "\r", "\t"):
        if char in value:
            raise InvalidArgument(f"{field} contains the control character U+{ord(char):04X}")
    return value


def check_map(values: dict[str, str], field: str) -> dict[str, str]:
    """A string map no larger than the spec's 4 KiB."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > MAX_MAP_BYTES:
        raise InvalidArgument(f"{field} is {size} bytes in total; the limit is {MAX_MAP_BYTES}")
    return values


def check_absolute_path(path: str, field: str) -> str:
    """An absolute, normalized path without `..`, NUL or control characters.

    Returns the path unchanged. Does not touch the filesystem.
    """
    require(path, field)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{field} is longer than {MAX_PATH_BYTES} bytes")
    if "\x00" in path or any(ord(ch) < 0x20 for ch in path):
        raise InvalidArgument(f"{field} {path!r} contains control characters")
    if not path.startswith("/"):
        raise InvalidArgument(f"{field} {path!r} must be an absolute path")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{field} {path!r} must not contain '..'")
    if path != "/" and os.path.normpath(path) != path.rstrip("/"):
        raise InvalidArgument(f"{field} {path!r} is not a normalized path")
    if path == "/":
        raise InvalidArgument(f"{field} must not be the root directory")
    long = next((part for part in path.split("/") if len(part.encode()) > NAME_MAX), None)
    if long is not None:
        # The kernel would answer ENAMETOOLONG for it at the first mkdir or mount.
        raise InvalidArgument(
            f"{field} {path!r}: the component {long[:32]!r}... is {len(long.encode())} bytes"
            f" long; Linux allows {NAME_MAX} per component (ENAMETOOLONG)")
    return path.rstrip("/")


def check_outside(path: str, field: str, pool_contains: Callable[[str], bool],
                  pool_root: str) -> None:
    """Refuse a staging or target path inside the driver's pool (its root, volumes,
    snapshots or records): a mount there would hide the catalog and the images.
    Raises InvalidArgument."""
    if pool_contains(path):
        raise InvalidArgument(
            f"{field} {path!r} is inside the driver's pool {pool_root}; a mount there would"
            " hide the volumes' images and catalog. Use a path outside it")


def check_no_symlink(path: str, field: str) -> None:
    """Refuse a path whose last component is a symlink, or whose parents resolve
    somewhere else than they read (a symlinked parent could redirect a mount).

    Raises InvalidArgument. A path that does not exist yet is fine.
    """
    parent = os.path.dirname(path)
    resolved = files.resolve(parent)
    if resolved != parent:
        raise InvalidArgument(
            f"{field} {path!r}: its parent directory resolves to {resolved!r}"
            " through a symlink; give the real path"
        )
    if targets.is_symlink(path):
        raise InvalidArgument(f"{field} {path!r} is a symlink; refusing to follow it")


# Mount flags a StorageClass may ask for. Words that weaken isolation (suid, dev) are
# left out on purpose: staging always adds nosuid,nodev.
_FLAG_WORDS = frozenset(
    {
        "ro", "noatime", "nodiratime", "relatime", "strictatime", "lazytime",
        "noexec", "nosuid", "nodev", "sync", "dirsync", "discard", "nodiscard",
        "nobarrier", "barrier", "inode64", "noquota", "uquota", "gquota", "pquota",
        "prjquota", "usrquota", "grpquota", "ssd", "nossd", "autodefrag", "noautodefrag",
        "compress-force", "user_xattr", "acl", "noacl", "nouuid", "norecovery",
        "largeio", "nolargeio", "wsync", "attr2", "noattr2", "dax",
    }
)
_FLAG_KEYS = frozenset(
    {
        "data", "commit", "errors", "journal_ioprio", "stripe", "logbufs", "logbsize",
        "allocsize", "swalloc", "compress", "space_cache", "max_inline", "subvol",
        "inode_readahead_blks", "init_itable", "barrier", "discard", "noload",
    }
)
_FLAG_VALUE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def check_mount_flags(flags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Every flag must be an allow-listed word, or `key=value` with an allow-listed key
    and a plain value. A flag that smuggles more options in with `,` is refused.

    Returns the flags, with "defaults" dropped. Raises InvalidArgument naming the flag.
    """
    cleaned: list[str] = []
    for flag in flags:
        if flag in ("defaults", ""):
            continue
        if "," in flag or any(ch.isspace() for ch in flag) or "\x00" in flag:
            raise InvalidArgument(
                f"mount flag {flag!r} is malformed: give one option per flag, no commas or spaces"
            )
        key, sep, value = flag.partition("=")
        if sep:
            if key not in _FLAG_KEYS or not _FLAG_VALUE.match(value):
                raise InvalidArgument(
                    f"mount flag {flag!r} is not allowed; allowed keys: {sorted(_FLAG_KEYS)}"
                )
        elif flag not in _FLAG_WORDS:
            raise InvalidArgument(
                f"mount flag {flag!r} is not allowed; allowed flags: {sorted(_FLAG_WORDS)}"
            )
        cleaned.append(flag)
    return tuple(cleaned)
