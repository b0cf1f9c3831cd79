"""The divergence and layer-loss registries against an independent float64 computation (numpy / scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, rel_entr

from ted.errors import TedInputError
from ted.method import losses
from ted.method.divergences import DIVERGENCES, LAYER_LOSSES, forward_kl, jsd, reverse_kl, skew_kl, skew_rkl, tvd
from ted.registry import Registry, parse_spec

# ------------------------------------------------------------------------------------------ reference (float64)


def _probs(logits: np.ndarray, T: float) -> np.ndarray:
    return np.exp(log_softmax(logits / T, axis=-1))


def _ref_rows(name: str, s: np.ndarray, t: np.ndarray, T: float, param: float | None = None) -> np.ndarray:
    """Per-position divergence, written straight from each definition (no log-space tricks)."""
    p_s, p_t = _probs(s, T), _probs(t, T)
    if name == "forward_kl":
        return rel_entr(p_t, p_s).sum(-1)
    if name == "reverse_kl":
        return rel_entr(p_s, p_t).sum(-1)
    if name == "jsd":
        m = param * p_t + (1 - param) * p_s
        return param * rel_entr(p_t, m).sum(-1) + (1 - param) * rel_entr(p_s, m).sum(-1)
    if name == "tvd":
        return 0.5 * np.abs(p_t - p_s).sum(-1)
    if name == "skew_kl":
        return rel_entr(p_t, param * p_t + (1 - param) * p_s).sum(-1)
    if name == "skew_rkl":
        return rel_entr(p_s, param * p_s + (1 - param) * p_t).sum(-1)
    raise AssertionError(name)


def _ref_loss(name, s, t, T, param=None, keep=None) -> float:
    """Sum over kept positions / batch size * T^2."""
    rows = _ref_rows(name, s, t, T, param)
    if keep is not None:
        rows = rows * keep
    return float(rows.sum() / s.shape[0] * T**2)


def _logits(*shape, seed=0, scale=2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


CASES = [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9), ("tvd", None)]
CASES += [("skew_kl", 0.1), ("skew_kl", 0.4), ("skew_rkl", 0.1), ("skew_rkl", 0.3)]


def _call(name, param, s, t, T, mask=None):
    spec = name if param is None else f"{name}:{param}"
    return DIVERGENCES.resolve(spec)(s, t, T, mask)


# ------------------------------------------------------------------------------------------ golden values


@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize(("name", "param"), CASES)
def test_golden_values_classification(name, param, T):
    s, t = _logits(4, 5, seed=1), _logits(4, 5, seed=2)
    got = _call(name, param, s, t, T)
    expected = _ref_loss(name, s.double().numpy(), t.double().numpy(), T, param)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(("name", "param"), CASES)
def test_golden_values_tokens_with_position_mask(name, param):
    """[B, T, V] logits with a [B, T] mask: the sum over real tokens only, divided by B, times T^2."""
    s, t = _logits(2, 4, 7, seed=3), _logits(2, 4, 7, seed=4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1]])
    got = _call(name, param, s, t, 3.0, mask)
    expected = _ref_loss(name, s.double().numpy(), t.double().numpy(), 3.0, param, keep=mask.numpy())
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_temperature_scales_by_its_square():
    """T = 3: the T^2 factor is 9 (a factor 2T = 6 would be a different loss); equal logits give exactly 0."""
    s, t = _logits(3, 6, seed=5), _logits(3, 6, seed=6)
    rows = _ref_rows("forward_kl", s.double().numpy(), t.double().numpy(), 3.0).sum() / 3
    assert forward_kl(s, t, 3.0).item() == pytest.approx(9 * rows, rel=1e-5)
    assert forward_kl(s, t, 3.0).item() != pytest.approx(6 * rows, rel=1e-2)
    for name in DIVERGENCES.names():
        assert DIVERGENCES.get(name)(s, s.clone(), 3.0).abs().item() < 1e-6


# ------------------------------------------------------------------------------------------ parity with losses.py


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0])
def test_forward_kl_is_todays_kl_divergence(T):
    """Bit for bit: classification [B, C], and SQuAD-style [B, L] span logits with a same-shape mask."""
    s, t = _logits(4, 3, seed=7), _logits(4, 3, seed=8)
    assert torch.equal(forward_kl(s, t, T), losses.kl_divergence(s, t, T))
    s, t = _logits(3, 9, seed=9), _logits(3, 9, seed=10)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 2:] = 0
    assert torch.equal(forward_kl(s, t, T, mask), losses.kl_divergence(s, t, T, mask))
    # Half precision in: float32 math in both.
    assert torch.equal(forward_kl(s.bfloat16(), t.bfloat16(), T), losses.kl_divergence(s.bfloat16(), t.bfloat16(), T))


def test_mse_is_todays_layer_mse():
    s, t = _logits(2, 5, 8, seed=11), _logits(2, 5, 8, seed=12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    mse = LAYER_LOSSES.get("mse")
    assert torch.equal(mse(s, t), losses.layer_mse(s, t))
    assert torch.equal(mse(s, t, mask), losses.layer_mse(s, t, mask))
    flat_s, flat_t = s.flatten(0, 1), t.flatten(0, 1)
    assert torch.equal(mse(flat_s, flat_t), losses.layer_mse(flat_s, flat_t))


# ------------------------------------------------------------------------------------------ identities


def test_jsd_end_points_and_skew_zero_are_the_kls():
    s, t = _logits(3, 2, 5, seed=13), _logits(3, 2, 5, seed=14)
    mask = torch.tensor([[1, 0], [1, 1], [0, 0]])
    for T in (1.0, 3.0):
        fkl, rkl = forward_kl(s, t, T, mask), reverse_kl(s, t, T, mask)
        assert torch.equal(jsd(s, t, T, mask, beta=0.0), fkl)
        assert torch.equal(jsd(s, t, T, mask, beta=1.0), rkl)
        assert torch.equal(skew_kl(s, t, T, mask, alpha=0.0), fkl)
        assert torch.equal(skew_rkl(s, t, T, mask, alpha=0.0), rkl)
        assert torch.equal(DIVERGENCES.resolve("jsd:0")(s, t, T, mask), fkl)


def test_jsd_half_is_symmetric_and_bounded():
    """beta = 0.5 is the ordinary JSD: symmetric, and at most log 2 per position (before T^2 / B)."""
    s, t = _logits(4, 6, seed=15, scale=6.0), _logits(4, 6, seed=16, scale=6.0)
    assert jsd(s, t, 1.0).item() == pytest.approx(jsd(t, s, 1.0).item(), rel=1e-5)
    assert 0.0 < jsd(s, t, 1.0).item() <= np.log(2)


def test_tvd_symmetric_and_within_unit_interval():
    s, t = _logits(5, 4, seed=17, scale=8.0), _logits(5, 4, seed=18, scale=8.0)
    for T in (1.0, 3.0):
        per_position = tvd(s, t, T) / T**2  # a batch mean of per-position TVDs
        assert 0.0 < per_position.item() <= 1.0
        assert tvd(s, t, T).item() == pytest.approx(tvd(t, s, T).item(), rel=1e-6)
    # Disjoint supports: TVD 1 per position.
    far = torch.tensor([[100.0, -100.0]])
    assert tvd(far, -far, 1.0).item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("name", DIVERGENCES.names())
def test_masked_positions_change_nothing_and_a_dropped_row_gives_zero(name):
    s, t = _logits(2, 3, 5, seed=19), _logits(2, 3, 5, seed=20)
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])  # the second sequence is all padding
    fn = DIVERGENCES.get(name)
    base = fn(s, t, 3.0, mask)
    s2, t2 = s.clone(), t.clone()
    s2[mask == 0], t2[mask == 0] = float("nan"), 1e4  # anything at all, even NaN padding
    assert torch.equal(fn(s2, t2, 3.0, mask), base)
    # The all-padding sequence adds 0 (it still counts in the batch size, as in losses.kl_divergence).
    assert fn(s[1:], t[1:], 3.0, mask[1:]).item() == 0.0
    # Entry-wise mask (the logits' shape): dropped entries leave the softmax; a fully dropped row gives 0.
    entry_mask = torch.ones(2, 5, dtype=torch.long)
    entry_mask[0, 3:] = 0
    entry_mask[1] = 0
    s_row, t_row = s[:, 0], t[:, 0]
    expected = fn(s_row[:1, :3], t_row[:1, :3], 3.0) / 2  # only row 0's first 3 entries, batch size 2
    assert fn(s_row, t_row, 3.0, entry_mask).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("name", "param"), CASES)
def test_tokens_equal_the_per_position_loop(name, param):
    s, t = _logits(3, 4, 6, seed=21), _logits(3, 4, 6, seed=22)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    fn = DIVERGENCES.resolve(name if param is None else f"{name}:{param}")
    loop = sum(fn(s[b, i][None], t[b, i][None], 2.0) for b in range(3) for i in range(4) if mask[b, i])
    assert fn(s, t, 2.0, mask).item() == pytest.approx(loop.item() / 3, rel=1e-5)


def test_a_mask_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="mask shape"):
        forward_kl(_logits(2, 3, 4), _logits(2, 3, 4), 1.0, torch.ones(2, 4))


# ------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize(("name", "param"), CASES)
def test_gradients_reach_the_student_only(name, param):
    s = _logits(2, 3, 5, seed=23).requires_grad_(True)
    t = _logits(2, 3, 5, seed=24).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    _call(name, param, s, t, 3.0, mask).backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad[mask == 1].abs().sum() > 0
    assert torch.count_nonzero(s.grad[mask == 0]) == 0


def test_gradient_matches_finite_differences():
    """One float64 gradient check per divergence with a parameter (the log-space mixture's backward)."""
    s = _logits(2, 4, seed=25).double().requires_grad_(True)
    t = _logits(2, 4, seed=26).double()
    for fn, params in [(jsd, {"beta": 0.3}), (skew_kl, {"alpha": 0.2}), (skew_rkl, {"alpha": 0.2}), (tvd, {})]:
        # The divergences compute in float32, so compare against float32-sized steps and tolerances.
        loss = lambda x, fn=fn, params=params: fn(x, t, 2.0, **params).double()
        assert torch.autograd.gradcheck(loss, (s,), eps=1e-3, atol=1e-3, rtol=1e-2)


# ------------------------------------------------------------------------------------------ layer losses


def _ref_layer(name: str, s: np.ndarray, t: np.ndarray, keep: np.ndarray | None) -> float:
    keep = np.ones(s.shape[:-1]) if keep is None else keep.astype(np.float64)
    if name == "mse":
        return float((((s - t) ** 2).sum(-1) * keep).sum() / (keep.sum() * s.shape[-1]))
    if name == "cosine":
        cos = (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
        return float(((1 - cos) * keep).sum() / keep.sum())
    return float((((s - t) ** 2).sum(-1) * keep).sum() / ((t**2).sum(-1) * keep).sum())


@pytest.mark.parametrize("name", ["mse", "cosine", "nmse"])
def test_layer_losses_golden_on_every_shape(name):
    fn = LAYER_LOSSES.get(name)
    s3, t3 = _logits(2, 4, 6, seed=27), _logits(2, 4, 6, seed=28)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    cases = [(s3[:, 0], t3[:, 0], None), (s3, t3, mask), (s3, t3, None), (s3.flatten(0, 1), t3.flatten(0, 1), None)]
    for s, t, m in cases:
        expected = _ref_layer(name, s.double().numpy(), t.double().numpy(), None if m is None else m.numpy())
        assert fn(s, t, m).item() == pytest.approx(expected, rel=1e-5)
    # Padding positions change nothing, and gradients reach the student only.
    s_grad = s3.clone().requires_grad_(True)
    t_pad = t3.clone().requires_grad_(True)
    with torch.no_grad():
        t_pad[mask == 0] = 123.0
    fn(s_grad, t_pad, mask).backward()
    assert fn(s3, t_pad.detach(), mask).item() == pytest.approx(fn(s3, t3, mask).item(), rel=1e-6)
    assert t_pad.grad is None and torch.count_nonzero(s_grad.grad[mask == 0]) == 0


@pytest.mark.parametrize("name", ["mse", "cosine", "nmse"])
def test_layer_losses_accept_an_inference_mode_teacher(name):
    """The teacher runs under torch.inference_mode(); its states must not be saved for backward as they are."""
    with torch.inference_mode():
        teacher = _logits(2, 3, 4, seed=29) * 1.0
    student = _logits(2, 3, 4, seed=30).requires_grad_(True)
    LAYER_LOSSES.get(name)(student, teacher, torch.tensor([[1, 1, 0], [1, 0, 0]])).backward()
    assert torch.isfinite(student.grad).all()


def test_cosine_and_nmse_ignore_what_they_should():
    s, t = _logits(3, 5, seed=31), _logits(3, 5, seed=32)
    assert LAYER_LOSSES.get("cosine")(3.0 * s, t).item() == pytest.approx(LAYER_LOSSES.get("cosine")(s, t).item())
    assert LAYER_LOSSES.get("nmse")(10 * s, 10 * t).item() == pytest.approx(LAYER_LOSSES.get("nmse")(s, t).item())
    assert LAYER_LOSSES.get("cosine")(t, t).abs().item() < 1e-6


# ------------------------------------------------------------------------------------------ registry and specs


def test_parse_spec():
    assert parse_spec("forward_kl") == ("forward_kl", ())
    assert parse_spec(" JSD:0.5 ") == ("jsd", (0.5,))
    assert parse_spec("skew-kl:1e-1") == ("skew_kl", (0.1,))
    assert parse_spec("x:1,2.5") == ("x", (1.0, 2.5))
    for bad, message in [
        ("", "empty"),
        (":0.5", "must start with a letter"),
        ("jsd:", "not a finite number"),
        ("jsd:abc", "'abc' is not a finite number"),
        ("jsd:nan", "not a finite number"),
        ("jsd:0.5,", "not a finite number"),
        ("j sd", "must start with a letter"),
    ]:
        with pytest.raises(TedInputError, match=message):
            parse_spec(bad)


def test_unknown_names_suggest_the_closest_and_list_the_known():
    with pytest.raises(TedInputError, match=r"unknown divergence 'jds' \(did you mean 'jsd'\?\); known: forward_kl"):
        DIVERGENCES.get("jds")
    with pytest.raises(TedInputError, match=r"did you mean 'reverse_kl'"):
        DIVERGENCES.resolve("revers_kl")
    with pytest.raises(TedInputError, match=r"unknown layer loss 'cosin' \(did you mean 'cosine'\?\)"):
        LAYER_LOSSES.resolve("cosin")
    with pytest.raises(TedInputError, match=r"unknown divergence 'zzz'; known: "):  # nothing close: no guess
        DIVERGENCES.get("zzz")
    assert DIVERGENCES.get("Forward-KL") is forward_kl and "SKEW_RKL" in DIVERGENCES


def test_resolve_binds_and_checks_parameters():
    bound = DIVERGENCES.resolve("skew_kl:0.3")
    assert bound.func is skew_kl and bound.keywords == {"alpha": 0.3}
    assert DIVERGENCES.resolve("jsd").keywords == {}  # the default beta
    for spec, message in [
        ("jsd:1.5", r"jsd beta must be in \[0, 1\], got 1.5"),
        ("skew_kl:1", r"alpha must be in \[0, 1\), got 1"),
        ("skew_rkl:-0.1", r"alpha must be in \[0, 1\)"),
        ("jsd:0.5,2", r"jsd takes at most 1 \(beta\), got 2; write jsd:BETA"),
        ("tvd:1", r"tvd takes no parameters, got 1; write tvd"),
        ("cosine:1", "takes no parameters"),
    ]:
        registry = LAYER_LOSSES if spec.startswith("cosine") else DIVERGENCES
        with pytest.raises(TedInputError, match=message):
            registry.resolve(spec)
    with pytest.raises(TedInputError, match="beta must be in"):  # direct calls are checked too
        jsd(_logits(1, 3), _logits(1, 3), 1.0, beta=2.0)


def test_register_your_own():
    registry: Registry = Registry("divergence")

    @registry.register("scaled_kl", check=lambda scale=1.0: None)
    def scaled_kl(student_logits, teacher_logits, temperature, mask=None, *, scale=1.0):
        return scale * forward_kl(student_logits, teacher_logits, temperature, mask)

    s, t = _logits(2, 3), _logits(2, 3, seed=1)
    assert registry.names() == ["scaled_kl"]
    assert registry.resolve("scaled-kl:2")(s, t, 1.0).item() == pytest.approx(2 * forward_kl(s, t, 1.0).item())
    with pytest.raises(TedInputError, match="already registered"):
        registry.register("scaled_kl")(scaled_kl)
    registry.register("scaled_kl", replace=True)(forward_kl)
    assert registry.get("scaled_kl") is forward_kl
    with pytest.raises(TedInputError, match="cannot register"):
        registry.register("bad:name")
    assert DIVERGENCES.names()[0] == "forward_kl" and LAYER_LOSSES.names()[0] == "mse"
