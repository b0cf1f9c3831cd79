"""`ted doctor`: minutes of checks before hours of Stage II (issue 14).

A distillation run can fail silently: a teacher barely above chance, Stage I filters that learned nothing,
or a weighted distillation term so large that the student is pulled away from the task. The doctor takes the
same options as `ted distill`, loads the same models and data, and reports

- the teacher's dev score (on at most --doctor_eval_samples examples) beside the majority-class baseline
  (mean prediction for regression), the label order of teacher, student and data, tokenizer agreement and
  the layer map;
- each Stage I filter head's dev score (stage1_layer_scores.json) beside the same baseline, flagging heads
  at chance;
- every loss term on --doctor_batches training batches at step 0, raw and weighted, and the kl_alpha /
  mse_alpha that put each weighted term at --balance_kl_ratio / --balance_mse_ratio of the task loss.

`ted distill` runs the same checks on fewer examples (`preflight`) and prints their warnings before training.

The modules: `findings` (what was found; verdict, text, JSON), `checks` (baselines and the judgements),
`measure` (predictions and step-0 terms on loaded models; `diagnose`, `preflight`), `context` (what distill
loads), `command` (`run_doctor`) and `pipeline` (`--pipeline_config`). Import from here.
"""

from __future__ import annotations

from ted.stages.doctor.checks import (
    chance_band,
    check_stage1,
    check_teacher,
    check_terms,
    constant_predictions,
    majority_baseline,
)
from ted.stages.doctor.command import run_doctor
from ted.stages.doctor.context import build_context
from ted.stages.doctor.findings import Findings, report_text, write_findings
from ted.stages.doctor.measure import diagnose, preflight
from ted.stages.doctor.pipeline import PIPELINE_HELP, run_pipeline_doctor

__all__ = [
    "PIPELINE_HELP",
    "Findings",
    "build_context",
    "chance_band",
    "check_stage1",
    "check_teacher",
    "check_terms",
    "constant_predictions",
    "diagnose",
    "majority_baseline",
    "preflight",
    "report_text",
    "run_doctor",
    "run_pipeline_doctor",
    "write_findings",
]
