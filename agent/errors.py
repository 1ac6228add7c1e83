"""Errors of the agent's runtime, each with the gRPC status its servicer answers."""

from __future__ import annotations

import grpc


class AgentError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION


class JobNotFound(AgentError):
    code = grpc.StatusCode.NOT_FOUND


class StageNotLoaded(AgentError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WeightsMismatch(AgentError):
    """The model's weight files do not hash to what the coordinator expects."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class BadRequest(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Draining(AgentError):
    """The agent is draining and takes no new work."""

    code = grpc.StatusCode.UNAVAILABLE


class NotYetSupported(AgentError):
    """An action that later issues implement (backward, all-reduce, redistribution)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class MissingInput(AgentError):
    """A FORWARD or SEND whose micro-batch has no state yet (no RECV before it)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PeerUnreachable(AgentError):
    """A peer this agent must reach (to probe a link) does not answer."""

    code = grpc.StatusCode.UNAVAILABLE


class JobClosed(AgentError):
    """A step of a job that was closed meanwhile (its agent was frozen or cut off)."""

    code = grpc.StatusCode.ABORTED
