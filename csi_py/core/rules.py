"""Which capabilities and parameters the driver accepts: pure checks, no state.

Each function here reads only its arguments (and the configured filesystem list) and
raises InvalidArgument with a message that says what was wrong and what is accepted.
"""

from __future__ import annotations

from csi_py.config import Config
from csi_py.core import validation as v
from csi_py.domain.errors import InvalidArgument, Subject
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessType, Capability, Provisioning, Volume

PARAM_FS_TYPE = "fsType"
# The StorageClass key Kubernetes documents. external-provisioner strips it and puts its
# value in the capability's fs_type; a CO that passes it through is understood too.
PARAM_PREFIXED_FS_TYPE = "csi.storage.k8s.io/fstype"
PARAM_PROVISIONING = "provisioning"
KNOWN_PARAMETERS = (PARAM_FS_TYPE, PARAM_PROVISIONING)
# Keys the external-provisioner adds (with --extra-create-metadata); they describe the
# PVC and never change what we build.
IGNORED_PARAMETER_PREFIXES = ("csi.storage.k8s.io/",)


def check_capability(cap: Capability, filesystems: tuple[str, ...]) -> None:
    """Raise InvalidArgument when we can never honour `cap`. Pure."""
    if not cap.access_mode.supported:
        raise InvalidArgument(
            f"access mode {cap.access_mode.value} is not supported: a loop device lives on"
            " one node, so only SINGLE_NODE_* modes are offered"
        )
    if cap.access_type is AccessType.MOUNT and cap.fs_type and cap.fs_type not in filesystems:
        raise InvalidArgument(
            f"filesystem type {cap.fs_type!r} is not supported; choose one of {filesystems}"
        )
    if cap.access_type is AccessType.BLOCK and cap.mount_flags:
        raise InvalidArgument("mount flags make no sense for a block volume")
    v.check_mount_flags(cap.mount_flags)


def check_volume_capability(volume: Volume, cap: Capability) -> None:
    """The spec's "Exceeds capabilities" for an existing volume: a capability naming
    another filesystem than the volume holds. Pure; raises InvalidArgument."""
    if cap.access_type is AccessType.MOUNT and cap.fs_type and volume.fs_type and \
            cap.fs_type != volume.fs_type:
        raise InvalidArgument(
            f"holds {volume.fs_type}, not {cap.fs_type}; the capability does not fit it",
            subject=volume_subject(volume.id))


def requested_fs_type(parameters: dict[str, str]) -> str:
    """The filesystem a CreateVolume's parameters name ("" for none). Pure."""
    return parameters.get(PARAM_FS_TYPE) or parameters.get(PARAM_PREFIXED_FS_TYPE, "")


def parse_parameters(
    config: Config, parameters: dict[str, str], caps: list[Capability]
) -> tuple[str, Provisioning]:
    """The filesystem and provisioning a CreateVolume (or GetCapacity) asks for, from
    its parameters and capabilities, defaults filled in. Pure; raises InvalidArgument
    for unknown or contradicting parameters."""
    v.check_map(parameters, "parameters")
    unknown = sorted(
        k for k in parameters
        if k not in KNOWN_PARAMETERS and not k.startswith(IGNORED_PARAMETER_PREFIXES)
    )
    if unknown:
        raise InvalidArgument(
            f"unknown parameter(s) {unknown}; this driver accepts {list(KNOWN_PARAMETERS)}"
        )
    cap_fs = {c.fs_type for c in caps if c.access_type is AccessType.MOUNT and c.fs_type}
    if len(cap_fs) > 1:
        raise InvalidArgument(f"volume capabilities ask for several filesystems: {cap_fs}")
    fs_type = requested_fs_type(parameters)
    if fs_type and fs_type not in config.filesystems:
        raise InvalidArgument(
            f"parameter {PARAM_FS_TYPE}={fs_type!r} is not supported; choose one of"
            f" {config.filesystems}"
        )
    if fs_type and cap_fs and cap_fs != {fs_type}:
        raise InvalidArgument(
            f"parameter {PARAM_FS_TYPE}={fs_type!r} contradicts the capability's"
            f" fs_type {cap_fs.pop()!r}"
        )
    fs_type = fs_type or (cap_fs.pop() if cap_fs else config.default_fs_type)
    prov = parameters.get(PARAM_PROVISIONING, config.default_provisioning)
    try:
        provisioning = Provisioning(prov)
    except ValueError:
        raise InvalidArgument(
            f"parameter {PARAM_PROVISIONING}={prov!r} must be 'thin' or 'thick'"
        ) from None
    return fs_type, provisioning


def check_snapshot_parameters(parameters: dict[str, str], subject: Subject) -> None:
    """Snapshots take no parameters beyond the CO's own metadata keys. Pure; raises
    InvalidArgument about `subject` (the snapshot or group snapshot being cut)."""
    v.check_map(parameters, "parameters")
    unknown = sorted(k for k in parameters if not k.startswith(IGNORED_PARAMETER_PREFIXES))
    if unknown:
        raise InvalidArgument(f"unknown parameter(s) {unknown}; snapshots take none",
                              subject=subject)


def capabilities_fit(
    volume: Volume, caps: list[Capability], parameters: dict[str, str],
    mutable_parameters: dict[str, str] | None, filesystems: tuple[str, ...],
) -> tuple[bool, str]:
    """ValidateVolumeCapabilities' answer for an existing volume: (confirmed, reason
    when not). Pure; never raises."""
    for cap in caps:
        try:
            check_capability(cap, filesystems)
        except InvalidArgument as exc:
            return False, str(exc)
        if cap.access_type is AccessType.MOUNT and volume.fs_type and \
                cap.fs_type not in ("", volume.fs_type):
            return False, f"volume {volume.id} holds {volume.fs_type}, not {cap.fs_type}"
    if parameters and parameters != volume.parameter_map:
        return False, f"volume {volume.id} was created with other parameters"
    if mutable_parameters:
        return False, (f"volume {volume.id}: mutable_parameters {sorted(mutable_parameters)}"
                       " are not supported by this driver")
    return True, ""
