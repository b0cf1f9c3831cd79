"""Build a teacher/student pair with the paper's shapes and random weights, for benchmarks without the hub.

    python benchmarks/random_pair.py --output_dir runs/random_pair [--shapes deberta-v3] [--tokenizer DIR]

Writes OUTPUT/teacher (DeBERTaV3-base shape: 12 layers, hidden 768, 12 heads, FFN 3072) and OUTPUT/student
(DeBERTaV3-xsmall shape: 12 layers, hidden 384, 6 heads, FFN 1536), both DeBERTa-v2 architecture with
DeBERTaV3's relative-attention settings and its 128,100-token vocabulary size. The tokenizer is a local one
(default: the shared MiniLM tokenizer, 30,522 tokens, all ids valid in the larger embedding): compute and
memory follow the model shapes, not the tokenizer. Then:

    python benchmarks/run.py --model_pair runs/random_pair/teacher runs/random_pair/student [--bf16]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TED_SHARED_DIR", REPO.parent / "shared"))

# DeBERTaV3 settings shared by base and xsmall (their published config.json files).
DEBERTA_V3 = dict(
    model_type="deberta-v2",
    vocab_size=128100,
    relative_attention=True,
    max_relative_positions=-1,
    position_buckets=256,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type=["p2c", "c2p"],
    position_biased_input=False,
    max_position_embeddings=512,
    type_vocab_size=0,
    layer_norm_eps=1e-7,
    hidden_act="gelu",
)
SHAPES = {
    "deberta-v3": {
        "teacher": dict(
            DEBERTA_V3, num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072
        ),
        "student": dict(
            DEBERTA_V3, num_hidden_layers=12, hidden_size=384, num_attention_heads=6, intermediate_size=1536
        ),
    },
}


def pair_configs(shapes: str, pad_token_id: int) -> dict:
    """{"teacher": config, "student": config} for a named pair of shapes."""
    from transformers import AutoConfig

    configs = {}
    for role, shape in SHAPES[shapes].items():
        shape = dict(shape)
        configs[role] = AutoConfig.for_model(shape.pop("model_type"), pad_token_id=pad_token_id, **shape)
    return configs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="deberta-v3")
    parser.add_argument(
        "--tokenizer",
        default=str(SHARED / "models" / "paraphrase-MiniLM-L3-v2"),
        help="a local tokenizer folder shared by both models",
    )
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv)

    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(opts.tokenizer)
    for role, config in pair_configs(opts.shapes, tokenizer.pad_token_id).items():
        if len(tokenizer) > config.vocab_size:
            raise SystemExit(
                f"--tokenizer has {len(tokenizer)} tokens, more than the vocabulary of {config.vocab_size}"
            )
        torch.manual_seed(opts.seed)
        model = AutoModel.from_config(config)
        folder = Path(opts.output_dir) / role
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{role}: {folder} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, {params:,} parameters)"
        )


if __name__ == "__main__":
    main()
