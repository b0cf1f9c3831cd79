"""The on-disk format of one cache entry: `values.npy` + `offsets.npy` + a manifest written last, and its reader."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from ted import artifacts
from ted.method.teacher_cache.plan import Component

if TYPE_CHECKING:
    import numpy.typing as npt

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> Optional[dict]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, component: Component) -> bool:
    manifest = read_manifest(folder)
    if not manifest or manifest.get("key") != component.key:
        return False
    files = manifest.get("files", {})
    try:
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def np_dtype(dtype: str) -> npt.DTypeLike:
    return np.uint16 if dtype == "bfloat16" else np.dtype(dtype)  # numpy has no bfloat16: its bits as uint16


def start_folder(tmp: Path, c: Component, rows: int, tokens: int, offsets: np.ndarray) -> None:
    """An empty entry under its `.building` name: marked as being written, `values.npy` allocated."""
    if tmp.exists():  # a build cut off by a kill: start it again
        logger.warning("Removing %s: a teacher cache build that was cut off.", tmp)
        artifacts.remove_marked_tree(tmp, artifacts.WRITING_MARKER)
    tmp.mkdir(parents=True)
    (tmp / artifacts.WRITING_MARKER).touch()
    shape = ((tokens if c.per_token else rows), *c.row_shape)
    np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np_dtype(c.dtype), shape=shape).flush()
    np.save(tmp / "offsets.npy", offsets)


def finish_folder(tmp: Path, final: Path, c: Component, rows: int) -> None:
    """The manifest written last, then the entry renamed into place."""
    (tmp / artifacts.WRITING_MARKER).unlink()
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = {"key": c.key, "component": c.name, "rows": rows, "dtype": c.dtype, "files": files}
    manifest.update({"description": c.description, "versions": artifacts.versions()})
    artifacts.crash_point("teacher_cache_manifest")
    artifacts.atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    if final.exists():  # an entry with the same name but not complete (files lost): replace it
        artifacts.remove_marked_tree(final, MANIFEST)
    os.replace(tmp, final)


class Store:
    """Read-only, memory-mapped view of one component. Picklable (DataLoader workers open their own maps)."""

    def __init__(self, folder: Path, component: Component) -> None:
        self.folder, self.component = Path(folder), component
        self._values = self._offsets = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "component": self.component, "_values": None, "_offsets": None}

    def _open(self) -> None:
        if self._values is None:
            self._values = np.load(self.folder / "values.npy", mmap_mode="r")
            self._offsets = np.load(self.folder / "offsets.npy")

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.view(torch.bfloat16) if self.component.dtype == "bfloat16" else t

    def values(self) -> np.ndarray:
        """The whole memory-mapped array (bfloat16 as its uint16 bits)."""
        self._open()
        return self._values

    def rows(self, index: list[int]) -> torch.Tensor:
        self._open()
        return self._tensor(self._values[np.asarray(index)])

    def tokens(self, index: list[int]) -> torch.Tensor:
        """The real tokens of the rows, concatenated in order: [sum of lengths, *row_shape]."""
        self._open()
        spans = [np.arange(self._offsets[i], self._offsets[i + 1]) for i in index]
        flat = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return self._tensor(self._values[flat])
