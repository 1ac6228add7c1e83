"""The 1F1B order of forward (F) and backward (B) passes for one stage."""

from __future__ import annotations

Action = tuple[str, int]  # ("F" | "B", micro-batch)


def one_f_one_b(stage: int, num_stages: int, micro_batches: int) -> list[Action]:
    """Warm-up forwards (as many as later stages), then alternate F and B, then drain.

    Stage ``s`` holds at most ``num_stages - s`` micro-batches' activations at a time."""
    warmup = min(num_stages - stage - 1, micro_batches)
    order: list[Action] = [("F", m) for m in range(warmup)]
    next_forward, next_backward = warmup, 0
    while next_backward < micro_batches:
        if next_forward < micro_batches:
            order.append(("F", next_forward))
            next_forward += 1
        order.append(("B", next_backward))
        next_backward += 1
    return order
