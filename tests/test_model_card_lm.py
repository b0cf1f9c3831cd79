"""The model card of a causal LM trained from a hub dataset names it: the `datasets` metadata the Hub reads (hub ids
only, not local folders) and a line of the Training section with its configuration and how dev was cut."""

from __future__ import annotations

import pytest

from ted.reporting import model_card
from test_causal_lm import write_decoder


def lm_stage(**args: object) -> dict:
    task = {"name": "causal_lm", "head": "causal_lm", "selection_metric": "perplexity"}
    return {"stage": "distill", "method": "kd", "task": task, "args": {"task_name": "causal_lm", **args}}


def card(tmp_path, stage: dict):
    """The card `ted export` writes, read back by huggingface_hub (metadata parsed from its YAML header)."""
    from huggingface_hub import ModelCard

    folder = tmp_path / "student"
    if not folder.is_dir():
        write_decoder(folder, "gpt2")
    return ModelCard(model_card.build(folder, stage, {"eval_perplexity": 12.5}))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            {"dataset_name": "wikitext", "dataset_config_name": "wikitext-103-raw-v1"},
            "Data: the hub dataset `wikitext`, configuration `wikitext-103-raw-v1`.",
        ),
        (
            {"dataset_name": "Skylion007/openwebtext", "validation_split_percentage": 1},
            "Data: the hub dataset `Skylion007/openwebtext`; dev set: its validation split, or (where it has none) "
            "the first 1% of its train rows.",
        ),
    ],
)
def test_a_hub_trained_lm_names_its_dataset(tmp_path, args, line):
    written = card(tmp_path, lm_stage(**args))
    assert written.data.datasets == [args["dataset_name"]]
    assert line in written.text.splitlines()
    assert written.data.pipeline_tag == "text-generation"


def test_local_data_is_not_listed_as_a_hub_dataset(tmp_path):
    folder = tmp_path / "owt"
    folder.mkdir()
    for args in ({"dataset_name": str(folder)}, {"dataset_name": "./owt"}, {"train_file": "a.txt"}):
        assert model_card.dataset_id(lm_stage(**args)) is None, args
    written = card(tmp_path, lm_stage(dataset_name=str(folder)))
    assert written.data.datasets is None
    assert f"Data: the dataset folder `{folder}`." in written.text.splitlines()
    assert "Data: " not in card(tmp_path, lm_stage(train_file="a.txt", validation_file="b.txt")).text
