"""How ted's own small modules (task-aware filters, Stage I heads) live in a stage folder: safetensors weights
beside a JSON file of their config dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import load_file, save_file
from torch import nn

from ted.errors import TedInputError


class SavedModule(nn.Module):
    """Base of a module saved as `WEIGHTS` + `CONFIG` in a folder; subclasses are built from `config_class(...)`."""

    WEIGHTS: ClassVar[str]
    CONFIG: ClassVar[str]
    WHAT: ClassVar[str]  # for messages: "filters", "Stage I heads"
    config_class: ClassVar[type]
    config: Any

    def save(self, folder: str | Path, state_dict: dict | None = None) -> None:
        """Write the weights (`state_dict`: this module's keys, e.g. gathered from FSDP; default: its own)."""
        folder = Path(folder)
        state = self.state_dict() if state_dict is None else state_dict
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(tensors, str(folder / self.WEIGHTS), metadata={"format": "pt"})
        (folder / self.CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path):
        folder = Path(folder)
        if not (folder / cls.CONFIG).is_file():
            raise TedInputError(f"{folder} holds no {cls.WHAT} ({cls.CONFIG} is missing).")
        module = cls(cls.config_class(**json.loads((folder / cls.CONFIG).read_text())))
        module.load_state_dict(load_file(str(folder / cls.WEIGHTS)))
        return module
