"""Wire errors, each with the gRPC status a servicer answers it with.

Code below raises these; servicers turn them into a status with ``abort_on_wire_error`` so
that bad input is always a clear status and never an unhandled exception.
"""

from __future__ import annotations

import grpc


class WireError(Exception):
    """A tensor message or a call that the wire refuses. ``code`` is the status to answer."""

    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


class MalformedMessage(WireError):
    """The bytes do not form a valid message: bad framing, header, dtype, offsets."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ChecksumMismatch(WireError):
    """The reassembled blob does not match the sender's checksum: corrupted in transit.

    DATA_LOSS is gRPC's code for "unrecoverable data corruption"; the sender may resend.
    """

    code = grpc.StatusCode.DATA_LOSS


class LimitExceeded(WireError):
    """A message or the bytes in flight from one peer exceed a configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnknownJob(WireError):
    """A message or call names a job this process does not host."""

    code = grpc.StatusCode.NOT_FOUND


class DuplicateMessage(WireError):
    """A second message arrived for a routing key whose first one was not yet taken."""

    code = grpc.StatusCode.ALREADY_EXISTS
