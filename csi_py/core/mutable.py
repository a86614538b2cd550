"""Mutable volume parameters (VolumeAttributesClass): what they are, how they are
checked, and how they are applied to a live loop device."""

from __future__ import annotations

import re

from csi_py.domain.errors import InvalidArgument, Subject
from csi_py.linux import Host

DIRECT_IO = "directIO"  # "true" / "false": the loop device's direct I/O mode
READ_AHEAD_KIB = "readAheadKiB"  # 0..65536: the loop device's read-ahead window
MUTABLE_KEYS = (DIRECT_IO, READ_AHEAD_KIB)
MAX_READ_AHEAD_KIB = 65536
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() also takes '²'
# The kernel's usual read-ahead window (VM_READAHEAD_PAGES), set on every attach unless a
# volume asks for another.
DEFAULT_READ_AHEAD_KIB = 128


def check_mutable(values: dict[str, str], subject: Subject) -> dict[str, str]:
    """Normalized mutable parameters. Raises InvalidArgument naming an unknown key or a
    bad value. Pure."""
    unknown = sorted(k for k in values if k not in MUTABLE_KEYS)
    if unknown:
        raise InvalidArgument(
            f"mutable parameter(s) {unknown} are not supported; this driver can"
            f" change {list(MUTABLE_KEYS)}",
            subject=subject,
        )
    normalized: dict[str, str] = {}
    if DIRECT_IO in values:
        text = values[DIRECT_IO].strip().lower()
        if text not in ("true", "false"):
            raise InvalidArgument(f"{DIRECT_IO} must be 'true' or 'false'", subject=subject)
        normalized[DIRECT_IO] = text
    if READ_AHEAD_KIB in values:
        text = values[READ_AHEAD_KIB].strip()
        if not _DIGITS.fullmatch(text) or int(text) > MAX_READ_AHEAD_KIB:
            raise InvalidArgument(
                f"{READ_AHEAD_KIB} must be a whole number from 0 to {MAX_READ_AHEAD_KIB}",
                subject=subject,
            )
        normalized[READ_AHEAD_KIB] = str(int(text))
    return normalized


def direct_io_wanted(values: dict[str, str], default: bool) -> bool:
    return values.get(DIRECT_IO, "true" if default else "false") == "true"


def apply_mutable(host: Host, device: str, values: dict[str, str]) -> None:
    """Make a live loop device match `values`. Idempotent. Raises LinuxError."""
    if DIRECT_IO in values:
        host.loops.set_direct_io(device, values[DIRECT_IO] == "true")
    if READ_AHEAD_KIB in values:
        host.loops.set_read_ahead(device, int(values[READ_AHEAD_KIB]))
