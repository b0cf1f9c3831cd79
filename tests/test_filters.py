"""Task-aware filters: layer selection, layer pairing, forward, layout, init, save/load, checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ted.errors import TedInputError
from ted.method.filters import (
    FILTERS_CONFIG,
    FILTERS_WEIGHTS,
    FilterConfig,
    TaskAwareFilters,
    check_filters_match,
    has_filters,
    match_layers,
    new_filters,
    select_layers,
)


@pytest.mark.parametrize(
    "interval, expected",
    [(1, [0, 1, 2, 3, 4, 5]), (2, [1, 3, 5]), (3, [2, 5])],
)
def test_select_layers_six_layers(interval, expected):
    assert select_layers(6, interval) == expected
    # The paper's rule, written out: layer i (0-based) carries a filter when (i + 1) % interval == 0.
    assert expected == [i for i in range(6) if (i + 1) % interval == 0]


def test_teacher_student_pairing_as_in_paper():
    teacher = select_layers(6, 2)  # 6-layer teacher, every 2nd layer
    student = select_layers(3, 1)  # 3-layer student, every layer
    assert teacher == [1, 3, 5]
    assert student == [0, 1, 2]
    # (student layer, teacher layer): the student's layer k learns from the teacher's layer 2k+1.
    assert match_layers(student, teacher) == [(0, 1), (1, 3), (2, 5)]


@pytest.mark.parametrize(
    "layers, interval, fragment",
    [(6, 4, "does not divide"), (6, 0, ">= 1"), (6, -1, ">= 1"), (3, 4, "larger than")],
)
def test_select_layers_bad_interval(layers, interval, fragment):
    with pytest.raises(TedInputError, match=fragment):
        select_layers(layers, interval)


def test_match_layers_count_mismatch_says_how_to_fix():
    with pytest.raises(TedInputError) as err:
        match_layers([0, 1], [0, 1, 2, 3])
    message = str(err.value)
    assert "--filter_interval" in message and "--teacher_filter_interval" in message


def _config(**kw) -> FilterConfig:
    base = dict(layers=[1, 3], hidden_size=8, output_dim=6, initializer_range=0.02)
    base.update(kw)
    return FilterConfig(**base)


def test_forward_reads_output_of_layer_i():
    torch.manual_seed(0)
    filters = TaskAwareFilters(_config())
    # hidden_states[0] is the embeddings; hidden_states[i + 1] is the output of layer i.
    hidden = tuple(torch.randn(2, 5, 8) for _ in range(5))
    out = filters(hidden)
    assert len(out) == 2 and all(o.shape == (2, 5, 6) for o in out)
    for layer, got in zip([1, 3], out):
        manual = nn.Linear(8, 6)
        manual.load_state_dict(filters.filters[str(layer)].state_dict())
        torch.testing.assert_close(got, manual(hidden[layer + 1]))
        # ... and not the neighbouring hidden state (the classic off-by-one).
        assert not torch.allclose(got, manual(hidden[layer]))


def test_linear_and_nonlinear_state_dict_layout():
    linear = TaskAwareFilters(_config())
    assert set(linear.state_dict()) == {"filters.1.weight", "filters.1.bias", "filters.3.weight", "filters.3.bias"}
    assert linear.state_dict()["filters.1.weight"].shape == (6, 8)

    nonlinear = TaskAwareFilters(_config(nonlinear=True))
    keys = set(nonlinear.state_dict())
    for i in (1, 3):
        assert {f"filters.{i}.0.weight", f"filters.{i}.0.bias", f"filters.{i}.2.weight", f"filters.{i}.2.bias"} <= keys
    assert nonlinear.state_dict()["filters.1.0.weight"].shape == (8, 8)  # hidden -> hidden
    assert nonlinear.state_dict()["filters.1.2.weight"].shape == (6, 8)  # hidden -> output_dim
    # Linear -> activation -> Linear: the output is not an affine map of the input.
    hidden = tuple(torch.randn(1, 3, 8) for _ in range(5))
    block = nonlinear.filters["1"]
    assert isinstance(block, nn.Sequential) and len(block) == 3
    torch.testing.assert_close(nonlinear(hidden)[0], block[2](block[1](block[0](hidden[2]))))


def test_init_normal_with_initializer_range_and_zero_bias():
    torch.manual_seed(0)
    filters = TaskAwareFilters(
        FilterConfig(layers=[0, 1], hidden_size=64, output_dim=64, initializer_range=0.05, nonlinear=True)
    )
    for name, tensor in filters.state_dict().items():
        if name.endswith("bias"):
            assert torch.count_nonzero(tensor) == 0, name
        else:
            # 4096 samples of N(0, 0.05): the sample std is within a few percent of 0.05.
            assert abs(tensor.std().item() - 0.05) < 0.005, name
            assert abs(tensor.mean().item()) < 0.005, name


def test_new_filters_takes_model_config():
    from transformers import BertConfig

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.1,
        hidden_act="relu",
    )
    filters = new_filters(config, [1, 3], output_dim=None, nonlinear=True, interval=2)
    assert filters.config.hidden_size == 32 and filters.config.output_dim == 32  # default width = hidden
    assert filters.config.initializer_range == 0.1 and filters.config.activation == "relu"
    assert filters.config.interval == 2 and filters.layers == [1, 3]


@pytest.mark.parametrize("nonlinear", [False, True])
def test_save_load_round_trip(tmp_path, nonlinear):
    torch.manual_seed(0)
    filters = TaskAwareFilters(_config(nonlinear=nonlinear, interval=2, role="projector"))
    assert not has_filters(tmp_path)
    filters.save(tmp_path)
    assert (tmp_path / FILTERS_WEIGHTS).is_file() and (tmp_path / FILTERS_CONFIG).is_file()
    assert has_filters(tmp_path)
    loaded = TaskAwareFilters.load(tmp_path)
    assert loaded.config == filters.config
    saved = load_file(str(tmp_path / FILTERS_WEIGHTS))
    assert set(saved) == set(filters.state_dict())
    for key, value in filters.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    hidden = tuple(torch.randn(2, 4, 8) for _ in range(5))
    for a, b in zip(filters(hidden), loaded(hidden)):
        torch.testing.assert_close(a, b)


def test_load_without_filters_is_input_error(tmp_path):
    with pytest.raises(TedInputError, match="holds no filters"):
        TaskAwareFilters.load(tmp_path)


def test_check_filters_match():
    filters = TaskAwareFilters(_config())
    check_filters_match(filters, [1, 3], 6, False, "x")  # identical: fine
    check_filters_match(filters, [1, 3], None, False, "x")  # no requested width: any width is fine
    with pytest.raises(TedInputError, match=r"layers \[1, 3\] \(requested \[0, 1, 2, 3\]\)") as err:
        check_filters_match(filters, [0, 1, 2, 3], 6, False, "somewhere/stage1")
    assert "somewhere/stage1" in str(err.value) and "--filter_interval" in str(err.value)
    with pytest.raises(TedInputError, match="output dim 6 .requested --filter_output_dim 16"):
        check_filters_match(filters, [1, 3], 16, False, "x")
    with pytest.raises(TedInputError, match="nonlinear=False .requested True"):
        check_filters_match(filters, [1, 3], 6, True, "x")
    # Several problems are reported together.
    with pytest.raises(TedInputError) as err:
        check_filters_match(filters, [0], 16, True, "x")
    assert str(err.value).count("requested") == 3
