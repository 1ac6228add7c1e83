"""The gRPC face of the planner: decode the request, call ``planner.plan``, encode."""

from __future__ import annotations

import asyncio
import time

import grpc

from planner.api import plan
from planner.convert import cluster_from_proto, model_from_proto, plan_to_proto
from planner.errors import PlanInfeasible
from planner.metrics import PlannerMetrics
from planner.plan import format_plan
from protos.v1 import planner_pb2 as pb
from protos.v1 import planner_pb2_grpc


class PlannerServicer(planner_pb2_grpc.PlannerServicer):
    """Stateless: every call plans from the profiles it carries."""

    def __init__(self, metrics: PlannerMetrics | None = None) -> None:
        self.metrics = metrics or PlannerMetrics()

    async def Plan(
        self, request: pb.PlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlanResponse:
        started = time.perf_counter()
        try:
            cluster = cluster_from_proto(request.cluster)
            model = model_from_proto(request.model)
            # The search is CPU-bound: keep the event loop free for other calls.
            result = await asyncio.to_thread(
                plan,
                cluster,
                model,
                technique=request.technique or "parallel-adapters",
                global_batch=request.global_batch or 32,
                micro_batches=request.micro_batches or None,
                strategy=request.strategy or "pac",
            )
        except PlanInfeasible as error:
            self.metrics.plans.labels("infeasible").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except ValueError as error:
            self.metrics.plans.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self.metrics.plans.labels("ok").inc()
        self.metrics.plan_seconds.observe(time.perf_counter() - started)
        return pb.PlanResponse(plan=plan_to_proto(result), table=format_plan(result))
