"""Forward hooks on the selected teacher layers (`ted.method.layer_hooks`): the same states as output_hidden_states."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tiny
from ted.method.layer_hooks import LayerTaps, find_layer_stack
from ted.method.objectives import Teacher
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 40
NUM_LAYERS = 4


def batch() -> dict[str, torch.Tensor]:
    """Two rows, the second right-padded: padding must not matter to the comparison."""
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def calls_with_hidden_states(model: nn.Module) -> list[object]:
    """The output_hidden_states argument of every call of `model` from now on."""
    seen: list[object] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("output_hidden_states")), with_kwargs=True)
    return seen


def encoder(arch: str) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = tiny.model_config(arch, VOCAB, NUM_LAYERS, 0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return AutoModelForSequenceClassification.from_config(config).eval()


MODELS = {
    "gpt2": lambda: tiny.decoder("gpt2", VOCAB),
    "llama": lambda: tiny.decoder("llama", VOCAB),
    "qwen2": lambda: tiny.decoder("qwen2", VOCAB),
    "bert": lambda: encoder("bert"),
    "roberta": lambda: encoder("roberta"),
    "deberta-v2": lambda: encoder("deberta-v2"),
}


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_hooked_layer_equals_output_hidden_states_exactly(arch):
    model, inputs = MODELS[arch](), batch()
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True)
    for layer in range(NUM_LAYERS):  # one layer at a time, then all of them
        taps = LayerTaps(model, [layer])
        with torch.no_grad():
            out, hidden = taps(inputs)
        assert taps.hooked and set(hidden) == {layer + 1}
        assert torch.equal(hidden[layer + 1], reference.hidden_states[layer + 1]), layer
        assert torch.equal(out.logits, reference.logits)
    taps = LayerTaps(model, list(range(NUM_LAYERS)))
    with torch.no_grad():
        taps(inputs)  # the first call checks the taps once against output_hidden_states
        seen = calls_with_hidden_states(model)
        out, hidden = taps(inputs)
    assert seen == [None] and out.hidden_states is None  # the model itself kept no hidden states
    for layer in range(NUM_LAYERS):
        assert torch.equal(hidden[layer + 1], reference.hidden_states[layer + 1]), layer


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_a_decoders_last_entry_is_read_after_its_final_norm(arch):
    """HF's last hidden_states entry is post-norm in decoders: the tap there is the final norm, not the layer."""
    model, inputs = MODELS[arch](), batch()
    layers, norm = find_layer_stack(model)
    assert len(layers) == NUM_LAYERS and norm is model.base_model.get_submodule({"gpt2": "ln_f"}.get(arch, "norm"))
    taps = LayerTaps(model, [NUM_LAYERS - 1])
    raw: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: object, out: object) -> None:  # a hook returning a value would replace it
        raw["out"] = out[0] if isinstance(out, tuple) else out

    layers[-1].register_forward_hook(keep)
    with torch.no_grad():
        _, hidden = taps(inputs)
        reference = model(**inputs, output_hidden_states=True).hidden_states[-1]
    assert taps.sources[NUM_LAYERS] is norm
    assert torch.equal(hidden[NUM_LAYERS], reference) and not torch.allclose(raw["out"], reference)


def test_equal_under_bf16_autocast_and_inference_mode():
    model, inputs = MODELS["llama"](), batch()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(**inputs, output_hidden_states=True).hidden_states
        _, hidden = LayerTaps(model, [1, 3])(inputs)
    assert hidden[2].dtype == reference[2].dtype
    assert torch.equal(hidden[2], reference[2]) and torch.equal(hidden[4], reference[4])


class Toy(nn.Module):
    """A model HF-shaped enough for the Teacher: `config`, and outputs with logits / hidden_states."""

    def __init__(self, report_scale: float = 1.0, with_list: bool = True) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=2)
        torch.manual_seed(0)
        blocks = [nn.Linear(4, 4), nn.Linear(4, 4)]
        self.blocks = nn.ModuleList(blocks) if with_list else None
        self.one, self.two = (None, None) if with_list else blocks
        self.report_scale = report_scale

    def forward(self, input_ids: torch.Tensor, attention_mask=None, output_hidden_states=False):
        states = [input_ids.float().unsqueeze(-1).expand(*input_ids.shape, 4)]
        for block in self.blocks if self.blocks is not None else [self.one, self.two]:
            states.append(block(states[-1]))
        reported = tuple(s * self.report_scale for s in states) if output_hidden_states else None
        return SimpleNamespace(logits=states[-1], hidden_states=reported)


@pytest.mark.parametrize(
    ("toy", "message", "level"),
    [
        (Toy(with_list=False), "no layer list found", logging.DEBUG),
        (Toy(report_scale=2.0), "the output of no module equals hidden_states[1]", logging.INFO),
    ],
)
def test_models_the_hooks_cannot_read_fall_back_to_output_hidden_states(toy, message, level, caplog):
    inputs = {"input_ids": torch.arange(6).view(2, 3)}
    caplog.set_level(logging.DEBUG, logger="ted.method.layer_hooks")
    taps = LayerTaps(toy, [0, 1])
    out, hidden = taps(inputs)
    assert not taps.hooked and message in caplog.text
    assert [r.levelno for r in caplog.records if message in r.getMessage()] == [level]
    reference = toy(**inputs, output_hidden_states=True).hidden_states
    assert torch.equal(hidden[1], reference[1]) and torch.equal(hidden[2], reference[2])


def test_the_teacher_reads_its_filtered_states_through_the_hooks():
    from ted.method.filters import new_filters

    model, inputs = MODELS["bert"](), batch()
    torch.manual_seed(0)
    filters = new_filters(model.config, [1, 3], 16, nonlinear=False)
    teacher = Teacher(model, filters, [1, 3], "classification")
    token_index = inputs["attention_mask"].flatten().nonzero().squeeze(1)
    preds, states = teacher(inputs, with_states=True, token_index=token_index)
    assert teacher.taps.hooked
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        expected = [filters.filters[str(i)](out.hidden_states[i + 1].flatten(0, 1)[token_index]) for i in (1, 3)]
    assert torch.equal(preds, out.logits)
    for got, want in zip(states, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
