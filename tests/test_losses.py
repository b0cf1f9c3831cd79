"""Every loss against values computed by hand (plain Python `math`, never torch's own loss functions)."""

from __future__ import annotations

import math

import pytest
import torch

from ted.method import losses
from ted.method.kinds import get_kind


def _softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _logsumexp(xs: list[float]) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def _kl_rows(student: list[list[float]], teacher: list[list[float]], T: float) -> float:
    """sum over rows and classes of p_t * (log p_t - log p_s), temperature-softened."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s = _softmax([x / T for x in s_row])
        p_t = _softmax([x / T for x in t_row])
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total


def test_classification_loss_drops_negative_labels():
    logits = [[1.0, 2.0, 0.0], [5.0, -5.0, 0.0], [3.0, 1.0, 2.0]]
    labels = [1, -100, 0]  # the middle example is ignored
    # CE(row) = logsumexp(row) - row[label], averaged over the two kept rows:
    #   row 0: log(e^1 + e^2 + e^0) - 2 ; row 2: log(e^3 + e^1 + e^2) - 3
    expected = ((_logsumexp(logits[0]) - 2.0) + (_logsumexp(logits[2]) - 3.0)) / 2
    got = losses.classification_loss(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # A label of -1 is dropped the same way.
    got = losses.classification_loss(torch.tensor(logits), torch.tensor([1, -1, 0]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_all_ignored_is_zero_and_backward_works():
    logits = torch.tensor([[1.0, 2.0], [0.5, -0.5]], requires_grad=True)
    loss = losses.classification_loss(logits, torch.tensor([-100, -1]))
    assert loss.item() == 0.0
    loss.backward()  # the paper's code crashes (NaN / no graph) on such a batch
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_regression_loss():
    preds = torch.tensor([[0.5], [2.0], [-1.0]])
    labels = torch.tensor([1.0, 1.0, 0.0])
    # ((0.5-1)^2 + (2-1)^2 + (-1-0)^2) / 3 = (0.25 + 1 + 1) / 3
    assert losses.regression_loss(preds, labels).item() == pytest.approx(2.25 / 3, rel=1e-6)


def test_span_loss_ignores_out_of_range_positions():
    start = [[0.1, 2.0, -1.0], [1.0, 0.0, 0.5]]
    end = [[0.0, 0.3, 1.2], [2.0, 1.0, 0.0]]
    start_pos = [1, 7]  # 7 is beyond the 3 positions: clamped to 3 = ignore index, dropped
    end_pos = [2, 0]
    start_ce = _logsumexp(start[0]) - start[0][1]  # only row 0 counts
    end_ce = ((_logsumexp(end[0]) - end[0][2]) + (_logsumexp(end[1]) - end[1][0])) / 2
    got = losses.span_loss(torch.tensor(start), torch.tensor(end), torch.tensor(start_pos), torch.tensor(end_pos))
    assert got.item() == pytest.approx((start_ce + end_ce) / 2, rel=1e-6)
    # The span kind's task loss is the same function.
    via_task = get_kind("span").task_loss(
        (torch.tensor(start), torch.tensor(end)), (torch.tensor(start_pos), torch.tensor(end_pos))
    )
    assert via_task.item() == pytest.approx(got.item(), rel=1e-7)


def test_kl_divergence_T2_batchmean_times_T_squared():
    s = [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]
    t = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]
    # Row 0 by hand: t/2 = [1.5, 1, 0.5], s/2 = [0.5, 1, 1.5]; p_t = softmax(t/2), p_s = softmax(s/2)
    #   KL_0 = sum_j p_t[j] * (log p_t[j] - log p_s[j]).  Row 1 likewise.
    # batchmean: (KL_0 + KL_1) / 2 (the batch size), then * T^2 = 4.
    z_t = math.exp(1.5) + math.exp(1.0) + math.exp(0.5)
    p_t0 = [math.exp(1.5) / z_t, math.exp(1.0) / z_t, math.exp(0.5) / z_t]
    p_s0 = p_t0[::-1]  # s/2 is t/2 reversed
    kl0 = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t0, p_s0))
    z1 = 2 + math.exp(0.5)
    p_t1 = [math.exp(0.5) / z1, 1 / z1, 1 / z1]
    p_s1 = [1 / z1, 1 / z1, math.exp(0.5) / z1]
    kl1 = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t1, p_s1))
    expected = (kl0 + kl1) / 2 * 4
    assert expected == pytest.approx(_kl_rows(s, t, 2.0) / 2 * 4)  # the helper agrees with the long hand
    got = losses.kl_divergence(torch.tensor(s), torch.tensor(t), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Identical distributions: zero.
    assert losses.kl_divergence(torch.tensor(s), torch.tensor(s), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_divergence_teacher_is_a_constant():
    s = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    t = torch.tensor([[3.0, 2.0, 1.0]], requires_grad=True)
    losses.kl_divergence(s, t, 2.0).backward()
    assert s.grad is not None and t.grad is None


def test_masked_kl_equals_kl_on_unmasked_subvector():
    s = [[0.3, -1.0, 2.0, 0.7], [1.5, 0.2, -0.4, 0.0]]
    t = [[1.0, 0.5, -2.0, 0.1], [0.0, 1.0, 2.0, -1.0]]
    mask = [[1, 1, 0, 1], [1, 0, 0, 1]]
    kept_s = [[x for x, m in zip(row, mrow) if m] for row, mrow in zip(s, mask)]
    kept_t = [[x for x, m in zip(row, mrow) if m] for row, mrow in zip(t, mask)]
    expected = _kl_rows(kept_s, kept_t, 2.0) / 2 * 4  # batchmean over the 2 rows, * T^2
    got = losses.kl_divergence(torch.tensor(s), torch.tensor(t), 2.0, mask=torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Row by row, the masked loss is the unmasked loss on the kept entries.
    for i in range(2):
        row = losses.kl_divergence(torch.tensor([kept_s[i]]), torch.tensor([kept_t[i]]), 2.0)
        assert row.item() == pytest.approx(_kl_rows([kept_s[i]], [kept_t[i]], 2.0) * 4, rel=1e-5)
    # Changing a masked-out logit changes nothing.
    s2 = [row[:] for row in s]
    s2[0][2] = 100.0
    got2 = losses.kl_divergence(torch.tensor(s2), torch.tensor(t), 2.0, mask=torch.tensor(mask))
    assert got2.item() == pytest.approx(got.item(), rel=1e-6)


def test_regression_distillation_is_mse_between_predictions():
    s = torch.tensor([[0.2], [1.0], [-0.4]])
    t = torch.tensor([0.0, 1.2, 0.3])
    # ((0.2-0)^2 + (1-1.2)^2 + (-0.4-0.3)^2) / 3 = (0.04 + 0.04 + 0.49) / 3
    assert losses.regression_distillation(s, t).item() == pytest.approx(0.57 / 3, rel=1e-6)


def test_regression_kl_paper_softmax_across_batch():
    s = [0.2, 1.0, -0.4]
    t = [0.0, 1.2, 0.3]
    # The original code flattens the B predictions into ONE distribution over the batch:
    # KL(softmax(t/2) || softmax(s/2)) summed, / B (batchmean over the flattened vector's first dim) * T^2.
    p_t = _softmax([x / 2 for x in t])
    p_s = _softmax([x / 2 for x in s])
    expected = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s)) / 3 * 4
    got = losses.regression_kl_paper(torch.tensor(s).view(3, 1), torch.tensor(t).view(3, 1), 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Shifting all predictions by one constant leaves it unchanged (softmax invariance): a property
    # of the paper's accident that the principled MSE does not share.
    shifted = losses.regression_kl_paper(torch.tensor(s).view(3, 1) + 5.0, torch.tensor(t).view(3, 1), 2.0)
    assert shifted.item() == pytest.approx(got.item(), rel=1e-5)
    assert losses.regression_distillation(torch.tensor(s) + 5.0, torch.tensor(t)).item() > 20


def test_layer_mse_unmasked_and_masked():
    student = [[[1.0, 2.0], [0.0, 1.0], [9.0, 9.0]], [[0.5, 0.5], [7.0, -7.0], [3.0, 3.0]]]
    teacher = [[[0.0, 2.0], [1.0, 1.0], [0.0, 0.0]], [[0.5, 1.5], [0.0, 0.0], [0.0, 0.0]]]
    mask = [[1, 1, 0], [1, 0, 0]]  # 3 real tokens, 3 padding positions
    sq = [[[(a - b) ** 2 for a, b in zip(st, tt)] for st, tt in zip(sr, tr)] for sr, tr in zip(student, teacher)]
    unmasked = sum(v for row in sq for tok in row for v in tok) / (2 * 3 * 2)
    # Real tokens only: (1,0) + (1,0) + (0,1) -> 3 / (3 tokens * 2 features) = 0.5
    real = [sq[b][i] for b in range(2) for i in range(3) if mask[b][i]]
    masked = sum(v for tok in real for v in tok) / (len(real) * 2)
    assert masked == pytest.approx(0.5)
    s, t, m = torch.tensor(student), torch.tensor(teacher), torch.tensor(mask)
    assert losses.layer_mse(s, t).item() == pytest.approx(unmasked, rel=1e-6)
    assert losses.layer_mse(s, t, m).item() == pytest.approx(masked, rel=1e-6)
    # With an all-ones mask it is the plain mean.
    assert losses.layer_mse(s, t, torch.ones(2, 3)).item() == pytest.approx(unmasked, rel=1e-6)
    # Padding values do not matter under a mask.
    s2 = s.clone()
    s2[0, 2] = -100.0
    assert losses.layer_mse(s2, t, m).item() == pytest.approx(masked, rel=1e-6)
    # The teacher is a constant.
    s_req, t_req = s.clone().requires_grad_(), t.clone().requires_grad_()
    losses.layer_mse(s_req, t_req, m).backward()
    assert t_req.grad is None and s_req.grad is not None
