"""Epoch 1 across devices: stages of consecutive blocks, 1F1B over micro-batches, data
parallelism inside a stage's device group. The core here knows no network: tensors move
through a :class:`~pac.pipeline.transport.Transport` (in-process queues in tests, the gRPC
wire on agents)."""
