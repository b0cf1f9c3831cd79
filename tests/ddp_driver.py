"""`ted` CLI under torchrun, recording in each process how the Trainer wrapped the trained module.

Used by test_distributed.py: `python -m torch.distributed.run --nproc_per_node 2 ddp_driver.py REPORT_DIR
distill ...`. Runs exactly `ted.cli.main.main` (what `python -m ted.cli.main` runs) and, at the first training step,
writes REPORT_DIR/rank{r}.json: the wrapper type, the world size, and whether any teacher parameter is
reachable from the trained (DDP-wrapped) module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ted.cli.main import main
from ted.method.trainer import TedTrainer

REPORT_DIR = Path(sys.argv[1])
_compute_loss = TedTrainer.compute_loss


def _spy(self, model, inputs, *args, **kwargs):
    path = REPORT_DIR / f"rank{self.args.process_index}.json"
    if model.training and not path.exists():
        teacher_params = {id(p) for p in self.teacher.model.parameters()}
        if self.teacher.filters is not None:
            teacher_params |= {id(p) for p in self.teacher.filters.parameters()}
        path.write_text(
            json.dumps(
                {
                    "wrapper": type(model).__name__,
                    "world_size": self.args.world_size,
                    "teacher_in_trained_module": any(id(p) in teacher_params for p in model.parameters()),
                    "teacher_requires_grad": any(p.requires_grad for p in self.teacher.model.parameters()),
                    "teacher_training": self.teacher.model.training,
                }
            )
        )
    return _compute_loss(self, model, inputs, *args, **kwargs)


TedTrainer.compute_loss = _spy

if __name__ == "__main__":
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    sys.exit(main(sys.argv[2:]))
