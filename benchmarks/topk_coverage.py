"""How much of a causal-LM teacher's next-token distribution its top k tokens hold, and how far the top-k ("sparse")
KD term read from the teacher cache is from the full one, for a few k (docs/teacher-cache.md).

Teacher: a causal LM folder (default: the shared SmolLM2-135M-Instruct GGUF). Student: the teacher with only
`--keep` layers (default: the 15 layers block influence keeps, docs/language-models.md), built in memory.
Text: the first `--blocks` blocks of `--block_size` tokens of a raw text file. Prints one JSON object.

    python benchmarks/topk_coverage.py --blocks 4 --block_size 256
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SHARED = "../shared"
BI_15 = "0,1,5,8,10,11,19,20,21,22,23,24,27,28,29"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=f"{SHARED}/models/smollm2-135m-instruct-q4_1")
    parser.add_argument("--text", default=f"{SHARED}/data/lm/wikitext-2-raw/wiki.test.raw")
    parser.add_argument("--keep", default=BI_15)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--ks", default="16,64,128,256,1024")
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()

    from ted.method.chunked import chunked
    from ted.method.divergences import DIVERGENCES
    from ted.method.teacher_cache.topk import dense_teacher, top_log_probs
    from ted.stages.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    start = time.perf_counter()
    teacher = load_causal_lm(args.model)
    tokenizer = load_tokenizer(args.model)
    lines = [line for line in open(args.text, encoding="utf-8").read().splitlines() if line.strip()]
    ids = tokenizer("\n".join(lines[:400]))["input_ids"][: args.blocks * args.block_size]
    blocks = torch.tensor(ids).view(args.blocks, args.block_size)
    student = load_causal_lm(args.model)
    keep = [int(i) for i in args.keep.split(",")]
    student.model.layers = torch.nn.ModuleList(student.model.layers[i] for i in keep)
    student.config.num_hidden_layers = len(keep)
    with torch.no_grad():
        t_logits = torch.cat([teacher(input_ids=b[None], use_cache=False).logits for b in blocks])
        s_logits = torch.cat([student(input_ids=b[None], use_cache=False).logits for b in blocks])
    mask = torch.ones(blocks.shape, dtype=torch.bool)
    mask[:, -1] = False  # the last position of a block predicts nothing
    T = args.temperature
    forward_kl = DIVERGENCES.get("forward_kl")
    full = float(chunked(forward_kl, s_logits, t_logits, T, mask)) * blocks.size(0) / int(mask.sum())
    flat = t_logits.flatten(0, 1)
    rows = mask.flatten().nonzero().squeeze(1)
    soft = torch.log_softmax(flat.index_select(0, rows).float() / T, dim=-1)
    result = {"model": args.model, "positions": int(mask.sum()), "vocab": flat.size(-1), "temperature": T}
    result["full_forward_kl"] = round(full, 5)
    per_k = {}
    for k in (int(x) for x in args.ks.split(",")):
        values, top = top_log_probs(flat, rows, k)
        mass_t1 = values.exp().sum(-1)
        mass_soft = soft.gather(-1, top.long()).exp().sum(-1)  # the same k tokens' mass at temperature T
        dense = torch.full(flat.shape, 0.0).index_put_((rows,), dense_teacher(values, top, flat.size(-1)))
        sparse = chunked(forward_kl, s_logits, dense.view_as(t_logits), T, mask) * blocks.size(0) / int(mask.sum())
        per_k[k] = {
            "mass_t1_mean": round(float(mass_t1.mean()), 4),
            "mass_t1_p05": round(float(mass_t1.quantile(0.05)), 4),
            f"mass_t{T:g}_mean": round(float(mass_soft.mean()), 4),
            "sparse_forward_kl": round(float(sparse), 5),
            "relative_error": round(abs(float(sparse) - full) / full, 5),
            "bytes_per_position_float16": k * (2 + 4),
        }
    result["top_k"] = per_k
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
