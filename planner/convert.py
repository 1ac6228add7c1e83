"""Protobuf <-> planner values (the only place that knows both)."""

from __future__ import annotations

from planner.plan import Action, DeviceGroup, Instruction, Plan, Stage
from planner.profiles import (
    Cluster,
    DeviceProfile,
    LayerProfile,
    LinkProfile,
    ModelProfile,
    Network,
)
from protos.v1 import planner_pb2 as pb

_ACTIONS = {
    Action.FORWARD: pb.PLANNER_ACTION_FORWARD,
    Action.BACKWARD: pb.PLANNER_ACTION_BACKWARD,
    Action.SEND: pb.PLANNER_ACTION_SEND,
    Action.RECV: pb.PLANNER_ACTION_RECV,
    Action.ALLREDUCE: pb.PLANNER_ACTION_ALLREDUCE,
    Action.OPTIMIZER_STEP: pb.PLANNER_ACTION_OPTIMIZER_STEP,
}
ACTION_FROM_PROTO = {v: k for k, v in _ACTIONS.items()}


def _link(msg: pb.LinkProfile, where: str) -> LinkProfile:
    if msg.bandwidth_bps <= 0:
        raise ValueError(f"{where}: bandwidth_bps must be positive, got {msg.bandwidth_bps}")
    return LinkProfile(msg.bandwidth_bps, msg.latency_s)


def cluster_from_proto(msg: pb.Cluster) -> Cluster:
    """ValueError (-> INVALID_ARGUMENT) on missing or inconsistent fields."""
    devices = tuple(
        DeviceProfile(
            name=d.name,
            forward_s=tuple(d.forward_s),
            side_s=tuple(d.side_s),
            memory_bytes=d.memory_bytes,
            backward_s=tuple(sorted((k, tuple(v.seconds)) for k, v in d.backward_s.items())),
            gflops=d.gflops,
            micro_batch_overhead_s=d.micro_batch_overhead_s,
            cpu_pool=d.cpu_pool,
            pool_cores=d.pool_cores,
            threads=d.threads or 1,
        )
        for d in msg.devices
    )
    for d in devices:
        if not d.name:
            raise ValueError("every device needs a name")
        if len(d.forward_s) != len(d.side_s):
            raise ValueError(f"device {d.name!r}: forward_s and side_s differ in length")
    if not msg.network.HasField("default_link"):
        raise ValueError("cluster.network.default_link is required")
    network = Network(
        _link(msg.network.default_link, "network.default_link"),
        tuple((o.a, o.b, _link(o.link, f"link {o.a}-{o.b}")) for o in msg.network.overrides),
    )
    return Cluster(devices, network)


def model_from_proto(msg: pb.ModelProfile) -> ModelProfile:
    return ModelProfile(
        msg.name,
        tuple(
            LayerProfile(
                name=x.name,
                weight_bytes=x.weight_bytes,
                activation_bytes=x.activation_bytes,
                side_param_bytes=x.side_param_bytes,
                side_activation_bytes=x.side_activation_bytes,
                backbone_stash_bytes=x.backbone_stash_bytes,
                side_stash_bytes=x.side_stash_bytes,
                lora_param_bytes=x.lora_param_bytes,
                adapter_param_bytes=x.adapter_param_bytes,
            )
            for x in msg.layers
        ),
        tuple((t.rows, t.scale) for t in msg.micro_batch_tokens),
        tuple((t.rows, t.devices, t.scale) for t in msg.one_stage_tokens),
    )


def cluster_to_proto(cluster: Cluster) -> pb.Cluster:
    msg = pb.Cluster()
    for d in cluster.devices:
        device = msg.devices.add(name=d.name, forward_s=d.forward_s, side_s=d.side_s,
                                 memory_bytes=d.memory_bytes, gflops=d.gflops,
                                 micro_batch_overhead_s=d.micro_batch_overhead_s,
                                 cpu_pool=d.cpu_pool, pool_cores=d.pool_cores,
                                 threads=d.threads)
        for technique, times in d.backward_s:
            device.backward_s[technique].seconds.extend(times)
    default = cluster.network.default
    msg.network.default_link.CopyFrom(pb.LinkProfile(bandwidth_bps=default.bandwidth_bps,
                                                     latency_s=default.latency_s))
    for a, b, link in cluster.network.overrides:
        msg.network.overrides.add(a=a, b=b, link=pb.LinkProfile(
            bandwidth_bps=link.bandwidth_bps, latency_s=link.latency_s))
    return msg


def model_to_proto(model: ModelProfile) -> pb.ModelProfile:
    msg = pb.ModelProfile(name=model.name)
    for x in model.layers:
        msg.layers.add(
            name=x.name, weight_bytes=x.weight_bytes, activation_bytes=x.activation_bytes,
            side_param_bytes=x.side_param_bytes, side_activation_bytes=x.side_activation_bytes,
            backbone_stash_bytes=x.backbone_stash_bytes, side_stash_bytes=x.side_stash_bytes,
            lora_param_bytes=x.lora_param_bytes, adapter_param_bytes=x.adapter_param_bytes,
        )
    for rows, scale in model.micro_batch_tokens:
        msg.micro_batch_tokens.add(rows=rows, scale=scale)
    for rows, devices, scale in model.one_stage_tokens:
        msg.one_stage_tokens.add(rows=rows, devices=devices, scale=scale)
    return msg


def plan_to_proto(plan: Plan) -> pb.Plan:
    msg = pb.Plan(
        strategy=plan.strategy,
        technique=plan.technique,
        global_batch=plan.global_batch,
        micro_batches=plan.micro_batches,
        step_time_s=plan.step_time_s,
        notes=plan.notes,
    )
    for s in plan.stages:
        msg.stages.add(
            index=s.index, start=s.start, end=s.end, time_s=s.time_s, allreduce_s=s.allreduce_s,
            group=pb.DeviceGroup(devices=s.group.devices, shares=s.group.shares),
        )
    for field, pairs in (
        (msg.memory_bytes, plan.memory_bytes),
        (msg.memory_limit_bytes, plan.memory_limit_bytes),
        (msg.cache_shares, plan.cache_shares),
    ):
        for name, value in pairs:
            field.add(device=name, value=value)
    for name, ops in plan.instructions:
        schedule = msg.schedules.add(device=name)
        for op in ops:
            schedule.instructions.add(action=_ACTIONS[op.action], stage=op.stage,
                                      micro_batch=op.micro_batch, peer=op.peer)
    return msg


def plan_from_proto(msg: pb.Plan) -> Plan:
    """The inverse of :func:`plan_to_proto` (what a client of the Planner service gets)."""
    return Plan(
        technique=msg.technique,
        global_batch=msg.global_batch,
        micro_batches=msg.micro_batches,
        stages=tuple(
            Stage(
                index=s.index,
                start=s.start,
                end=s.end,
                group=DeviceGroup(tuple(s.group.devices), tuple(s.group.shares)),
                time_s=s.time_s,
                allreduce_s=s.allreduce_s,
            )
            for s in msg.stages
        ),
        step_time_s=msg.step_time_s,
        memory_bytes=tuple((a.device, a.value) for a in msg.memory_bytes),
        memory_limit_bytes=tuple((a.device, a.value) for a in msg.memory_limit_bytes),
        cache_shares=tuple((a.device, a.value) for a in msg.cache_shares),
        instructions=tuple(
            (
                schedule.device,
                tuple(
                    Instruction(ACTION_FROM_PROTO[i.action], i.stage, i.micro_batch, i.peer)
                    for i in schedule.instructions
                ),
            )
            for schedule in msg.schedules
        ),
        notes=tuple(msg.notes),
        strategy=msg.strategy,
    )
