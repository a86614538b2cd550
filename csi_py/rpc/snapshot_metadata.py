"""CSI SnapshotMetadata service: GetMetadataAllocated and GetMetadataDelta, each a
server stream of range batches (VARIABLE_LENGTH: one range per extent, merged)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from csi_py._proto import csi_pb2 as pb
from csi_py._proto import csi_pb2_grpc
from csi_py.core.snapshot_metadata import RangeStream
from csi_py.domain.errors import DriverError, InvalidArgument
from csi_py.rpc.errors import status_for
from csi_py.rpc.servicer import Servicer, ready_rpc

log = logging.getLogger(__name__)

# Ranges per message when the caller leaves max_results 0: small enough for gRPC's 4 MiB
# message limit by far (a range is ~12 bytes), large enough to keep messages few.
DEFAULT_BATCH = 4096


def _batches(stream: RangeStream, max_results: int, response_type: type,
             context: grpc.ServicerContext) -> Iterator:
    batch = max_results if max_results > 0 else DEFAULT_BATCH

    def message(ranges: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
        return response_type(
            block_metadata_type=pb.VARIABLE_LENGTH,
            volume_capacity_bytes=stream.capacity_bytes,
            block_metadata=[pb.BlockMetadata(byte_offset=o, size_bytes=n) for o, n in ranges],
        )

    pending: list[tuple[int, int]] = []
    try:
        for rng in stream.ranges:
            pending.append(rng)
            if len(pending) == batch:
                yield message(pending)
                pending = []
    except DriverError as exc:  # raised mid-stream: end the stream with its status
        log.info("snapshot metadata stream ended: %s", exc)
        context.abort(status_for(exc), str(exc))
    if pending:
        yield message(pending)


class SnapshotMetadataService(Servicer, csi_pb2_grpc.SnapshotMetadataServicer):
    @ready_rpc
    def GetMetadataAllocated(self, request, context):  # noqa: N802
        if request.max_results < 0:
            raise InvalidArgument("max_results must not be negative")
        stream = self.driver.snapshot_metadata.allocated(request.snapshot_id,
                                                         request.starting_offset)
        return _batches(stream, request.max_results, pb.GetMetadataAllocatedResponse, context)

    @ready_rpc
    def GetMetadataDelta(self, request, context):  # noqa: N802
        if request.max_results < 0:
            raise InvalidArgument("max_results must not be negative")
        stream = self.driver.snapshot_metadata.delta(
            request.base_snapshot_id, request.target_snapshot_id, request.starting_offset)
        return _batches(stream, request.max_results, pb.GetMetadataDeltaResponse, context)
