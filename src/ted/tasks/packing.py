"""Documents packed into blocks of tokens for `--task_name causal_lm`.

Each non-blank document becomes BOS (where the tokenizer adds one) + its tokens + EOS; the documents form one
stream cut every `block_size` tokens, and the last, shorter block is kept. The stream is read one batch of
documents at a time: full blocks leave as they fill and only the unfinished tail is carried, so memory is bounded
by one batch, not by the split.

A split of a dataset that `datasets` holds in its cache (a hub dataset) is packed into an Arrow file in that cache
(`<HF_DATASETS_CACHE>/ted_packed/`), memory-mapped, and reused by every later stage that packs the same rows with
the same tokenizer, block size and limit: OpenWebText (about 9B tokens) takes about 36 GB of disk there and little
memory. The file is written under a temporary name and renamed when complete, so an interrupted packing leaves
nothing a later run could mistake for finished. Local files are small enough to pack in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ted.artifacts import atomic_file
from ted.errors import TedInputError
from ted.lm.scoring import bos_prefix

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKED_FORMAT = 1  # part of every cache key: bump it when the blocks a packing writes change
CACHE_FOLDER = "ted_packed"


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without the special tokens the tokenizer would add, 1,000 texts at a time."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), 1000):
        ids.extend(tokenizer(texts[start : start + 1000], add_special_tokens=False, verbose=False)["input_ids"])
    return ids


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise TedInputError("The tokenizer has no EOS token, which causal_lm data puts after every document.")
    return tokenizer.eos_token_id


def _blocks(stream: np.ndarray, block_size: int) -> pa.Table:
    import pyarrow as pa

    offsets = np.append(np.arange(0, len(stream), block_size), len(stream)).astype(np.int32)
    return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(stream))})


def block_tables(
    batches: Iterable[list[str]], tokenizer: PreTrainedTokenizerBase, block_size: int, limit: Optional[int]
) -> Iterator[pa.Table]:
    """The blocks, a table of full ones per batch of documents and the short tail last. With `limit` (blocks)
    only the documents that fill it are read."""
    bos, eos = bos_prefix(tokenizer), eos_id(tokenizer)
    need = None if limit is None else limit * block_size
    carry, taken = np.zeros(0, dtype=np.int32), 0
    for texts in batches if need != 0 else ():
        docs = encode(tokenizer, [text for text in texts if text.strip()])
        ids = np.fromiter((t for doc in docs for t in (*bos, *doc, eos)), dtype=np.int32)
        if need is not None:
            ids = ids[: need - taken]
        taken += len(ids)
        stream = np.concatenate([carry, ids])
        full = len(stream) - len(stream) % block_size
        if full:
            yield _blocks(stream[:full], block_size)
        carry = stream[full:]
        if need is not None and taken >= need:
            break  # the rest is not read
    if len(carry):
        yield _blocks(carry, block_size)


def packed_blocks(
    batches: Iterable[list[str]], tokenizer: PreTrainedTokenizerBase, block_size: int, limit: Optional[int]
) -> datasets.Dataset:
    """The blocks as an in-memory datasets.Dataset with one `input_ids` column (int32 token ids)."""
    import datasets
    import pyarrow as pa

    tables = list(block_tables(batches, tokenizer, block_size, limit))
    table = pa.concat_tables(tables) if tables else _blocks(np.zeros(0, dtype=np.int32), block_size)
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides the ids a tokenizer gives, as text: the whole pipeline of a fast tokenizer (normaliser,
    pre-tokeniser, model, added tokens), else its vocabulary; with the BOS and EOS that packing adds."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return json.dumps([type(tokenizer).__name__, rules, bos_prefix(tokenizer), tokenizer.eos_token_id])


def cached_packed_blocks(
    rows: datasets.Dataset,
    batches: Iterable[list[str]],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    limit: Optional[int],
    key: str,
) -> datasets.Dataset:
    """`packed_blocks` of `rows` (read through `batches`), kept in the datasets cache when `rows` lives there
    and caching is on; in memory otherwise. `key` names what `batches` reads of `rows` (its text column)."""
    import datasets

    if not getattr(rows, "cache_files", None) or not datasets.is_caching_enabled():  # in memory, or streamed
        return packed_blocks(batches, tokenizer, block_size, limit)
    digest = hashlib.sha256(
        json.dumps([PACKED_FORMAT, rows._fingerprint, key, block_size, limit, tokenizer_identity(tokenizer)]).encode()
    ).hexdigest()[:32]
    path = Path(datasets.config.HF_DATASETS_CACHE) / CACHE_FOLDER / f"{digest}.arrow"
    if path.is_file():
        logger.info("Reusing the packed blocks in %s.", path)
    else:
        _write(block_tables(batches, tokenizer, block_size, limit), path)
        logger.info(
            "Packed %d rows into blocks of %d tokens: %s (reused by later stages).", len(rows), block_size, path
        )
    return datasets.Dataset.from_file(str(path))


def _write(tables: Iterator[pa.Table], path: Path) -> None:
    """The tables as one Arrow stream file, complete under its name or not there at all."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
    with atomic_file(path) as partial, pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
        for table in tables:
            out.write_table(table)
