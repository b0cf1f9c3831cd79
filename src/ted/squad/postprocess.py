"""Start/end logits of SQuAD windows -> answer text per question (HF run_qa post-processing).

Per example (ted-reference 5.2):
1. null score = min over its windows of start[cls] + end[cls] (v2 only);
2. candidates = top-n_best start x top-n_best end positions per window, dropping spans outside the
   context, with end < start or longer than max_answer_length tokens; score = start + end logit;
3. keep the best n_best (+ the null candidate for v2), softmax over them for probabilities;
4. v2: predict "" when null score - best non-null score > threshold; that difference is the
   question's null odds.

``SpanPostprocessor`` streams: it takes logits batch by batch and keeps only each window's
n_best candidates and null score (float32), so memory is O(windows x n_best), never the full
[windows, seq_len] logits.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ted.errors import TedInputError

if TYPE_CHECKING:
    import datasets
    import numpy.typing as npt
    import torch

    # Rows as a datasets.Dataset, a dict of lists or a list of dicts.
    Table = Union[datasets.Dataset, Mapping[str, Sequence[Any]], Iterable[Mapping[str, Any]]]
    # Logits as a torch tensor (any float dtype) or anything numpy reads.
    Logits = Union[torch.Tensor, npt.ArrayLike]

_CHUNK = 1000  # rows read at once from the features/examples tables


def _column_chunks(table: Table, columns: list[str], size: int = _CHUNK) -> Iterator[dict[str, list[Any]]]:
    """Yield dicts of lists for `columns` from a datasets.Dataset, a dict of lists or a list of dicts."""
    if hasattr(table, "select_columns") and hasattr(table, "iter"):  # datasets.Dataset, read lazily
        yield from table.select_columns(columns).iter(batch_size=size)
    elif isinstance(table, Mapping):
        n = len(table[columns[0]])
        for i in range(0, n, size):
            yield {c: table[c][i : i + size] for c in columns}
    else:
        rows = list(table)
        for i in range(0, len(rows), size):
            yield {c: [r[c] for r in rows[i : i + size]] for c in columns}


def _column_names(table: Table) -> set[str]:
    if hasattr(table, "column_names"):
        return set(table.column_names)
    if isinstance(table, Mapping):
        return set(table.keys())
    for row in table:
        return set(row.keys())
    return set()


def _to_numpy(x: Logits) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (bf16/fp16 included) without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class SpanPostprocessor:
    """Streaming SQuAD post-processing.

    examples: rows with "id" and "context" (Dataset, dict of lists or list of dicts).
    features: the eval windows with "example_id" and "offset_mapping" (None outside the context),
    optionally "cls_index" per window (default: ``cls_index``, 0 as in the reference code).
    Feed logits with ``add_batch(feature_indices, start, end)``, in any order, then call ``finalize()``.
    """

    def __init__(
        self,
        examples: Table,
        features: Table,
        version_2_with_negative: bool,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        null_score_diff_threshold: float = 0.0,
        cls_index: int = 0,
    ) -> None:
        if n_best_size < 1 or max_answer_length < 1:
            raise TedInputError(
                f"n_best_size and max_answer_length must be >= 1, got {n_best_size}, {max_answer_length}."
            )
        self.v2 = bool(version_2_with_negative)
        self.n_best = int(n_best_size)
        self.max_answer_length = int(max_answer_length)
        self.threshold = float(null_score_diff_threshold)

        self.example_ids: list[str] = []
        self.contexts: list[str] = []
        for chunk in _column_chunks(examples, ["id", "context"]):
            self.example_ids.extend(chunk["id"])
            self.contexts.extend(chunk["context"])
        id_to_index = {qid: i for i, qid in enumerate(self.example_ids)}

        # Windows' char offsets as one flat int32 array (-1 = not context) + per-window pointers.
        has_cls = "cls_index" in _column_names(features)
        cols = ["example_id", "offset_mapping"] + (["cls_index"] if has_cls else [])
        offsets, lengths, owner, cls = [], [], [], []
        for chunk in _column_chunks(features, cols):
            for j, (eid, offs) in enumerate(zip(chunk["example_id"], chunk["offset_mapping"])):
                if eid not in id_to_index:
                    raise TedInputError(f"Feature refers to example id {eid!r}, which is not among the examples.")
                owner.append(id_to_index[eid])
                lengths.append(len(offs))
                pairs = [(o[0], o[1]) if o is not None and len(o) >= 2 else (-1, -1) for o in offs]
                offsets.append(np.array(pairs, dtype=np.int32).reshape(-1, 2))
                cls.append(int(chunk["cls_index"][j]) if has_cls else cls_index)
        self._off = np.concatenate(offsets) if offsets else np.zeros((0, 2), np.int32)
        self._ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._ptr[1:])
        self._owner = np.asarray(owner, dtype=np.int64)
        self._cls = np.asarray(cls, dtype=np.int64)

        n_feat = len(lengths)
        self.num_features = n_feat
        k = self.n_best
        self._count = np.zeros(n_feat, dtype=np.int32)  # candidates kept per window
        self._cand_start = np.zeros((n_feat, k), dtype=np.int32)  # token indices
        self._cand_end = np.zeros((n_feat, k), dtype=np.int32)
        self._cand_sl = np.zeros((n_feat, k), dtype=np.float32)  # start / end logits
        self._cand_el = np.zeros((n_feat, k), dtype=np.float32)
        self._null = np.full(n_feat, np.inf, dtype=np.float32)
        self._null_sl = np.zeros(n_feat, dtype=np.float32)
        self._null_el = np.zeros(n_feat, dtype=np.float32)
        self._seen = np.zeros(n_feat, dtype=bool)

    # -- feeding -------------------------------------------------------------------------------

    def add_batch(self, feature_indices: npt.ArrayLike, start_logits: Logits, end_logits: Logits) -> None:
        """Logits [batch, seq] (float32; padding, e.g. -100, beyond a window's length is ignored)."""
        idx = np.asarray(feature_indices, dtype=np.int64).reshape(-1)
        S, E = _to_numpy(start_logits), _to_numpy(end_logits)
        if S.ndim == 1:
            S, E = S[None, :], E[None, :]
        if S.shape != E.shape or S.shape[0] != idx.shape[0]:
            raise ValueError(f"Logit shapes {S.shape}/{E.shape} do not match {idx.shape[0]} feature indices.")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_features):
            raise ValueError(f"Feature index out of range 0..{self.num_features - 1}.")
        seq = S.shape[1]
        k = min(self.n_best, seq)
        # Best-first positions; stable so ties keep the lower index.
        top_s = np.argsort(-S, axis=1, kind="stable")[:, :k]
        top_e = np.argsort(-E, axis=1, kind="stable")[:, :k]
        for r, f in enumerate(idx):
            self._add_window(int(f), S[r], E[r], top_s[r], top_e[r])

    def _add_window(self, f: int, s_log: np.ndarray, e_log: np.ndarray, top_s: np.ndarray, top_e: np.ndarray) -> None:
        offs = self._off[self._ptr[f] : self._ptr[f + 1]]
        usable = min(len(offs), s_log.shape[0])
        in_context = np.zeros(s_log.shape[0], dtype=bool)
        in_context[:usable] = offs[:usable, 0] >= 0

        cls = self._cls[f]
        if cls < s_log.shape[0]:
            self._null[f] = s_log[cls] + e_log[cls]
            self._null_sl[f], self._null_el[f] = s_log[cls], e_log[cls]

        ss, ee = top_s[:, None], top_e[None, :]
        valid = in_context[ss] & in_context[ee] & (ee >= ss) & (ee - ss + 1 <= self.max_answer_length)
        scores = (s_log[top_s][:, None] + e_log[top_e][None, :])[valid]
        si, ei = np.broadcast_arrays(ss, ee)
        si, ei = si[valid], ei[valid]  # row-major: start rank, then end rank (reference order)
        keep = np.argsort(-scores, kind="stable")[: self.n_best]
        n = keep.size
        self._count[f] = n
        self._cand_start[f, :n] = si[keep]
        self._cand_end[f, :n] = ei[keep]
        self._cand_sl[f, :n] = s_log[si[keep]]
        self._cand_el[f, :n] = e_log[ei[keep]]
        self._seen[f] = True

    # -- results -------------------------------------------------------------------------------

    def finalize(self) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]], dict[str, float]]:
        """(predictions qid -> text, n-best lists qid -> [{start_logit, end_logit, text, probability}],
        null odds qid -> null score - best span score (v2 only, else empty))."""
        if not self._seen.all():
            missing = int((~self._seen).sum())
            raise ValueError(f"No logits were given for {missing} of {self.num_features} features.")
        order = np.argsort(self._owner, kind="stable")  # windows grouped by example, in feature order
        bounds = np.searchsorted(self._owner[order], np.arange(len(self.example_ids) + 1))
        predictions: dict[str, str] = collections.OrderedDict()
        nbest_all: dict[str, list[dict[str, Any]]] = collections.OrderedDict()
        null_odds: dict[str, float] = collections.OrderedDict()
        for ex, qid in enumerate(self.example_ids):
            feats = order[bounds[ex] : bounds[ex + 1]]
            pred, nbest, odds = self._example_answer(ex, feats)
            predictions[qid] = pred
            nbest_all[qid] = nbest
            if self.v2 and odds is not None:
                null_odds[qid] = odds
        return predictions, nbest_all, null_odds

    def _example_answer(self, ex: int, feats: np.ndarray) -> tuple[str, list[dict[str, Any]], Optional[float]]:
        if not feats.size:  # every example normally has >= 1 window; if filtered out, abstain
            return "", [], None
        context = self.contexts[ex]
        cands = []  # (score, start_logit, end_logit, text, is_null)
        for f in feats:
            base = self._ptr[f]
            for c in range(self._count[f]):
                s, e = self._cand_start[f, c], self._cand_end[f, c]
                sl, el = self._cand_sl[f, c], self._cand_el[f, c]
                text = context[self._off[base + s, 0] : self._off[base + e, 1]]
                cands.append((sl + el, sl, el, text, False))
        null = None
        if self.v2:
            best_f = feats[int(np.argmin(self._null[feats]))]  # first window reaching the minimum
            null = (self._null[best_f], self._null_sl[best_f], self._null_el[best_f], "", True)
            cands.append(null)  # appended last: a span wins ties against the null answer
        cands.sort(key=lambda c: -float(c[0]))
        top = cands[: self.n_best]
        if null is not None and not any(c[4] for c in top):
            top.append(null)  # the null answer is always listed for v2
        no_span = not top or (len(top) == 1 and top[0][3] == "")
        if no_span:
            # No usable span: the reference lists a dummy "empty" answer (kept in the n-best and for
            # the null odds), but we answer "" instead of predicting the literal text "empty".
            top.insert(0, (np.float32(0.0), np.float32(0.0), np.float32(0.0), "empty", False))

        scores = np.array([float(c[0]) for c in top], dtype=np.float64)
        probs = np.exp(scores - scores.max())
        probs = (probs / probs.sum()).astype(np.float32)
        nbest = [
            {"start_logit": np.float32(c[1]), "end_logit": np.float32(c[2]), "text": c[3], "probability": p}
            for c, p in zip(top, probs)
        ]
        if not self.v2:
            return ("" if no_span else top[0][3]), nbest, None
        best = next(c for c in top if c[3] != "")
        odds = float(null[0]) - (float(best[1]) + float(best[2]))
        return ("" if no_span or odds > self.threshold else best[3]), nbest, odds


def _json_default(obj: object) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_prediction_files(
    output_dir: str | os.PathLike,
    predictions: Mapping[str, str],
    nbest: Optional[Mapping[str, Any]] = None,
    null_odds: Optional[Mapping[str, float]] = None,
    prefix: Optional[str] = None,
) -> list[str]:
    """Write predictions.json, nbest_predictions.json and (v2) null_odds.json; prefix -> "<prefix>_"."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for name, obj in (("predictions", predictions), ("nbest_predictions", nbest), ("null_odds", null_odds)):
        if obj is None or (name == "null_odds" and not obj):
            continue
        fname = f"{name}.json" if prefix is None else f"{prefix}_{name}.json"
        path = os.path.join(output_dir, fname)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=4, default=_json_default) + "\n")
        written.append(path)
    return written
