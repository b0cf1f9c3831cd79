"""Token divergences computed in chunks (`ted.method.chunked`) equal the dense registered ones, value and gradient."""

from __future__ import annotations

import functools

import pytest
import torch

from ted.errors import TedInputError
from ted.method.chunked import chunked, default_chunk_tokens
from ted.method.divergences import DIVERGENCES, forward_kl
from ted.registry import Registry
from test_divergences import CASES, _ref_loss

B, T, V = 3, 7, 11
TEMPERATURE = 3.0


def _logits(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2.0).to(dtype)


def _mask() -> torch.Tensor:
    """Holes inside sequences, an all-masked sequence, a prompt-like prefix left out."""
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 2:4] = 0
    mask[0, 6] = 0
    mask[1, :3] = 0
    mask[2] = 0
    return mask


def _value_and_grad(fn, s: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = s.detach().clone().requires_grad_(True)
    value = fn(leaf, t, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def _spec(name: str, param: float | None) -> str:
    return name if param is None else f"{name}:{param}"


@pytest.mark.parametrize("chunk_tokens", [1, 3, 4, 5, 64])
@pytest.mark.parametrize(("name", "param"), CASES)
def test_chunked_equals_dense_with_a_mask_with_holes(name, param, chunk_tokens):
    """Every divergence, chunk sizes that do and do not divide the 8 scored tokens, one bigger than all."""
    divergence = DIVERGENCES.resolve(_spec(name, param))
    s, t, mask = _logits(B, T, V, seed=1), _logits(B, T, V, seed=2), _mask()
    dense, dense_grad = _value_and_grad(divergence, s, t, TEMPERATURE, mask)
    value, grad = _value_and_grad(
        functools.partial(chunked, divergence, chunk_tokens=chunk_tokens), s, t, TEMPERATURE, mask
    )
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    assert value.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)
    expected = _ref_loss(name, s.double().numpy(), t.double().numpy(), TEMPERATURE, param, keep=mask.numpy())
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert grad[mask == 0].abs().max() == 0  # left-out positions get exactly no gradient


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-6), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(("name", "param"), [("forward_kl", None), ("jsd", 0.3), ("skew_rkl", 0.1)])
def test_input_dtypes_keep_the_dense_behaviour(name, param, dtype, tolerance):
    """The math is float32 as in the dense function; the gradient comes back in the student logits' dtype."""
    divergence = DIVERGENCES.resolve(_spec(name, param))
    s, t, mask = _logits(B, T, V, seed=3, dtype=dtype), _logits(B, T, V, seed=4, dtype=dtype), _mask()
    dense, dense_grad = _value_and_grad(divergence, s, t, 1.5, mask)
    value, grad = _value_and_grad(functools.partial(chunked, divergence, chunk_tokens=3), s, t, 1.5, mask)
    assert value.dtype == torch.float32 and grad.dtype == dtype
    assert value.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(grad, dense_grad, rtol=tolerance, atol=tolerance * 1e-2)


@pytest.mark.parametrize(("name", "param"), CASES)
def test_no_mask_and_a_per_entry_mask(name, param):
    """Without a mask every position counts; a logits-shaped mask (SQuAD spans) drops single entries."""
    divergence = DIVERGENCES.resolve(_spec(name, param))
    s, t = _logits(B, T, V, seed=5), _logits(B, T, V, seed=6)
    for mask in (None, (torch.rand(B, T, V, generator=torch.Generator().manual_seed(7)) > 0.3).long()):
        if mask is not None:
            mask[1, 2] = 0  # one position with no entry left
        dense, dense_grad = _value_and_grad(divergence, s, t, 2.0, mask)
        value, grad = _value_and_grad(functools.partial(chunked, divergence, chunk_tokens=4), s, t, 2.0, mask)
        assert value.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-7)
        torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)


def test_classification_shape_and_default_chunk():
    s, t = _logits(5, 4, seed=8), _logits(5, 4, seed=9)
    dense, dense_grad = _value_and_grad(forward_kl, s, t, 2.0)
    value, grad = _value_and_grad(functools.partial(chunked, forward_kl), s, t, 2.0)
    assert value.item() == pytest.approx(dense.item(), rel=1e-6)
    torch.testing.assert_close(grad, dense_grad)
    assert default_chunk_tokens(49_152) == 85 and default_chunk_tokens(151_936) == 27
    assert default_chunk_tokens(1 << 30) == 1


def test_everything_masked_gives_zero_and_a_zero_gradient():
    s = _logits(B, T, V, seed=10).requires_grad_(True)
    t = _logits(B, T, V, seed=11)
    nan_padded = s.detach().clone()
    nan_padded[0] = float("nan")  # what padding holds does not matter
    value = chunked(forward_kl, s, t, 2.0, torch.zeros(B, T), 4)
    value.backward()
    assert value.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))
    mask = torch.ones(B, T)
    mask[0] = 0
    s2 = nan_padded.requires_grad_(True)
    chunked(forward_kl, s2, t, 2.0, mask, 4).backward()
    assert torch.isfinite(s2.grad).all() and s2.grad[0].abs().max() == 0


def test_shifted_views_teacher_and_the_graph_around_it():
    """Next-token slices `logits[:, :-1]` are read in place; gradients flow back through them to the model."""
    weight = torch.randn(V, V, generator=torch.Generator().manual_seed(12), requires_grad=True)
    hidden = _logits(B, T, V, seed=13)
    teacher = _logits(B, T, V, seed=14).requires_grad_(True)
    mask = _mask()[:, 1:]
    grads = []
    for fn in (lambda s, t: forward_kl(s, t, 2.0, mask), lambda s, t: chunked(forward_kl, s, t, 2.0, mask, 3)):
        weight.grad = None
        student = hidden @ weight
        (0.5 * fn(student[:, :-1], teacher[:, :-1])).backward()
        grads.append(weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    assert teacher.grad is None  # the teacher is a constant


def test_only_the_inputs_are_saved_for_backward():
    """The dense term saves several [B, T, V] float32 tensors for backward; the chunked one saves its inputs."""
    s = _logits(B, T, V, seed=15).requires_grad_(True)
    t = _logits(B, T, V, seed=16)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    for fn, full_size_copies in ((forward_kl, 2), (lambda *a: chunked(forward_kl, *a, chunk_tokens=4), 0)):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            fn(s, t, 2.0, _mask())
        others = [x for x in saved if x.numel() == s.numel() and x.data_ptr() not in (s.data_ptr(), t.data_ptr())]
        assert len(others) >= full_size_copies if full_size_copies else not others


def test_each_call_sees_one_chunk_and_specs_work():
    seen: list[int] = []
    registry: Registry = Registry("divergence")

    @registry.register("counted_jsd")
    def counted_jsd(student_logits, teacher_logits, temperature, mask=None, *, beta=0.5):
        seen.append(student_logits.size(0))
        return DIVERGENCES.get("jsd")(student_logits, teacher_logits, temperature, mask, beta=beta)

    s, t, mask = _logits(B, T, V, seed=17), _logits(B, T, V, seed=18), _mask()
    value, grad = _value_and_grad(
        functools.partial(chunked, registry.resolve("counted_jsd:0.3"), chunk_tokens=5), s, t, TEMPERATURE, mask
    )
    assert seen == [5, 3] * 2  # forward, then the backward's recomputation; 8 scored tokens
    dense, dense_grad = _value_and_grad(DIVERGENCES.resolve("jsd:0.3"), s, t, TEMPERATURE, mask)
    assert value.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)


def test_bad_arguments():
    s, t = _logits(2, 3, 5, seed=19), _logits(2, 3, 5, seed=20)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(TedInputError, match="chunk_tokens must be a positive whole number"):
            chunked(forward_kl, s, t, 2.0, chunk_tokens=bad)
    with pytest.raises(ValueError, match="differ in shape"):
        chunked(forward_kl, s, t[..., :4], 2.0)
    with pytest.raises(ValueError, match="mask shape"):
        chunked(forward_kl, s, t, 2.0, torch.ones(2, 4))


def test_a_bf16_teacher_with_a_float32_student():
    """The teacher may run in bf16 while the student trains in float32: both go to float32, as in the dense term."""
    s, t, mask = _logits(B, T, V, seed=21), _logits(B, T, V, seed=22, dtype=torch.bfloat16), _mask()
    dense, dense_grad = _value_and_grad(forward_kl, s, t, 2.0, mask)
    value, grad = _value_and_grad(functools.partial(chunked, forward_kl, chunk_tokens=3), s, t, 2.0, mask)
    assert value.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_the_memory_benchmark_runs(tmp_path):
    """benchmarks/chunked_divergence.py at a small shape: three fresh processes, one JSON line, equal values."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "chunked_divergence.py"
    command = [sys.executable, str(script), "--batch", "2", "--length", "16", "--vocab", "512", "--rounds", "1"]
    done = subprocess.run([*command, "--json", str(tmp_path / "out.json")], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "out.json").read_text())
    assert result["relative_value_difference"] < 1e-5 and result["chunked"]["chunk_tokens"] == 8192
    for key in ("memory_ratio_dense_over_chunked", "beyond_gradient_ratio", "time_ratio_chunked_over_dense"):
        assert result[key] > 0
