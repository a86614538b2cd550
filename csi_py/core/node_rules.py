"""The node's decisions as plain functions of one VolumeView: is it already published,
what may a publish, an unpublish or an unstage take down. No kernel call here, so each
rule is tested without root (tests/unit/test_node_rules.py)."""

from __future__ import annotations

from dataclasses import dataclass

from csi_py.domain.errors import AlreadyExists, FailedPrecondition, Subject
from csi_py.domain.errors import volume as volume_subject
from csi_py.domain.model import AccessMode, AccessType, Staging, StagingState
from csi_py.linux.loop import LoopDevice
from csi_py.linux.volume_view import VolumeView, mount_is_of


def staged_device(view: VolumeView, volume_id: str) -> LoopDevice:
    """The device a publish binds from. Raises FailedPrecondition when the volume is
    recorded as staged but no device holds it any more."""
    device = view.staged
    if device is None:
        raise FailedPrecondition(
            "is staged but its loop device is gone (node"
            " restarted?); stage it again",
            subject=volume_subject(volume_id),
        )
    return device


def check_publish(
    view: VolumeView,
    volume_id: str,
    device: LoopDevice,
    staging_path: str,
    target_path: str,
    access_type: AccessType,
    access_mode: AccessMode,
    readonly: bool,
) -> bool:
    """Whether the publish is already done (True: nothing to do). Raises
    FailedPrecondition (the staging mount is gone; another target of a single-writer
    volume), AlreadyExists (the target holds something else, or this volume with the
    other read-only setting). Pure."""
    if access_type is AccessType.MOUNT:
        staged = view.top(staging_path)
        if staged is None or not mount_is_of(staged, device.path):
            raise FailedPrecondition(
                f"{staging_path} is not mounted; stage it again", subject=volume_subject(volume_id))
    current = view.top(target_path)
    if current is not None:
        ours = mount_is_of(current, device.path) if access_type is AccessType.MOUNT \
            else view.shows(current)
        if ours and current.read_only == readonly:
            return True
        raise AlreadyExists(
            f"already has {current.source} (readonly={current.read_only}) mounted; it is"
            f" not volume {volume_id} with readonly={readonly}",
            subject=Subject("target", path=target_path),
        )
    if access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER:
        # The spec's second NodePublishVolume table: another target path is
        # FAILED_PRECONDITION for SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod).
        # The legacy SINGLE_NODE_WRITER/READER_ONLY stay allowed on several
        # targets: COs that predate SINGLE_NODE_MULTI_WRITER send them for
        # ReadWriteOnce, which lets several pods on one node share the volume.
        others = [m.mount_point for m in view.users(staging_path, target_path)]
        if others:
            raise FailedPrecondition(
                f"is already published at {', '.join(others)};"
                f" access mode {access_mode.value} allows one target path"
                " (SINGLE_NODE_MULTI_WRITER allows several); unpublish it there first",
                subject=volume_subject(volume_id),
            )
    return False


@dataclass(frozen=True)
class UnpublishPlan:
    """What an unpublish takes down at its target."""

    unmounts: int  # this volume's mounts stacked on top of the target
    detach: str  # the read-only extra device made for this publish, or ""
    other_mount: bool  # something not ours is (or stays) mounted there: leave the path


def plan_unpublish(view: VolumeView, target_path: str, record: Staging | None) -> UnpublishPlan:
    """Which mounts at `target_path` are this volume's to take down (also those of
    its recorded device detached behind our back, whose dead node they still name),
    whether a read-only extra device goes with them, and whether the path must stay
    because another mount remains. Pure."""
    stack = view.stack(target_path)
    if not stack:
        return UnpublishPlan(0, "", False)
    lost_too = bool(view.lost) and record is not None and record.staged
    count = view.ours_on_top(target_path, lost_too=lost_too)
    if count == 0:
        return UnpublishPlan(0, "", True)
    detach = ""
    owner = view.owner(stack[-1])
    if owner is not None and owner.read_only and (record is None or owner.path != record.device):
        detach = owner.path
    return UnpublishPlan(count, detach, count < len(stack))


@dataclass(frozen=True)
class UnstagePlan:
    """What an unstage takes down."""

    unmounts: int  # this volume's mounts stacked on the staging path
    devices: tuple[LoopDevice, ...]  # every device of the volume, to detach


def plan_unstage(view: VolumeView, volume_id: str, staging_path: str) -> UnstagePlan:
    """The staging path's mounts of this volume and the devices to detach. Raises
    FailedPrecondition while the volume is still published at another path. Pure."""
    users = view.users(staging_path)
    if users:
        raise FailedPrecondition(
            "is still published at"
            f" {', '.join(m.mount_point for m in users)}; unpublish it first",
            subject=volume_subject(volume_id),
        )
    return UnstagePlan(view.ours_on_top(staging_path), view.devices)


def check_compatible_staging(previous: Staging, wanted: Staging) -> None:
    """Whether a stage may proceed over the volume's previous staging record: an
    interrupted one is redone; a finished one must be at the same path (else
    FailedPrecondition) with the same capability (else AlreadyExists). Pure."""
    if previous.state is not StagingState.STAGED:
        return  # an interrupted stage or unstage: redo it
    if previous.staging_path != wanted.staging_path:
        raise FailedPrecondition(
            f"is already staged at {previous.staging_path};"
            f" unstage it there before staging at {wanted.staging_path}",
            subject=volume_subject(wanted.volume_id),
        )
    if (previous.access_type, previous.fs_type, previous.mount_flags, previous.readonly) != (
        wanted.access_type, wanted.fs_type, wanted.mount_flags, wanted.readonly
    ):
        raise AlreadyExists(
            f"is staged at {wanted.staging_path} with another"
            f" capability ({describe(previous)}); asked for {describe(wanted)}",
            subject=volume_subject(wanted.volume_id),
        )


def describe(staging: Staging) -> str:
    return (f"{staging.access_type.value}, fs={staging.fs_type or '-'},"
            f" flags={list(staging.mount_flags)}, readonly={staging.readonly}")
