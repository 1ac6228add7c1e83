"""What the side network keeps for its backward (pac/techniques/parallel_adapters/layer.py):
ladder points in the cache's own narrow dtype, one copy of the MLP's hidden activation and
one attention mask for all blocks, with the same values and gradients as the plain
modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pac.techniques.parallel_adapters.layer import (
    attention_mask,
    gelu_then_linear,
    widen_then_linear,
)


def saved_bytes(output: torch.Tensor) -> int:
    """Bytes of the distinct tensors the autograd graph of ``output`` keeps (the
    parameters' own storages left out)."""
    seen: dict[int, int] = {}
    stack, visited = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        tensors = list(getattr(node, "saved_tensors", ()))
        tensors += [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
        for value in tensors:
            if torch.is_tensor(value) and not isinstance(value, nn.Parameter):
                storage = value.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        stack.extend(following for following, _ in node.next_functions)
    return sum(seen.values())


def test_gelu_then_linear_keeps_one_hidden_copy_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    down = nn.Linear(32, 8)
    x = torch.randn(3, 5, 32, requires_grad=True)
    # (a non-leaf input, as the MLP's first linear gives; one graph each)
    plain = down(F.gelu(x * 2))
    fused = gelu_then_linear(x * 2, down)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)

    grad = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (x, down.weight, down.bias), grad)
    got = torch.autograd.grad(fused, (x, down.weight, down.bias), grad)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)

    hidden_bytes = x.numel() * x.element_size()
    assert saved_bytes(down(F.gelu(x * 2))) >= 2 * hidden_bytes  # gelu's input and output
    assert saved_bytes(gelu_then_linear(x * 2, down)) < 2 * hidden_bytes


def test_the_additive_mask_attends_as_the_boolean_one() -> None:
    torch.manual_seed(0)
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    for causal in (False, True):
        allowed = key_mask.bool()[:, None, None, :].expand(-1, 1, 5, -1)
        if causal:
            allowed = allowed & torch.ones(5, 5, dtype=torch.bool).tril()
        additive = attention_mask(key_mask, 5, causal)
        assert additive.shape == ((2, 1, 5, 5) if causal else (2, 1, 1, 5))
        assert set(additive.unique().tolist()) == {0.0, float("-inf")}
        torch.testing.assert_close(
            F.scaled_dot_product_attention(q, k, v, attn_mask=additive),
            F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
        )


def test_widen_then_linear_keeps_the_narrow_input_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 8)
    point = torch.randn(3, 5, 64).half()  # (a ladder point read from an fp16 cache)

    plain = linear(point.float())
    widened = widen_then_linear(point, linear)
    torch.testing.assert_close(widened, plain, rtol=0, atol=0)

    grad = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (linear.weight, linear.bias), grad)
    got = torch.autograd.grad(widened, (linear.weight, linear.bias), grad)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)

    assert saved_bytes(linear(point.float())) == point.numel() * 4
    assert saved_bytes(widen_then_linear(point, linear)) == point.numel() * 2


def test_widen_then_linear_passes_an_input_gradient_back_in_its_dtype() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 4)
    x = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    widen_then_linear(x, linear).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        x.grad.float(), linear.weight.sum(0).expand(2, -1).bfloat16().float()
    )
