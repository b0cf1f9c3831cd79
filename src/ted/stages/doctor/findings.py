"""What the doctor found, and how it is shown: the verdict, the text report and the --json file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ted import artifacts


@dataclass
class Findings:
    """What the doctor found; `as_json` gives the documented keys."""

    metric: Optional[str] = None
    dev_examples: int = 0
    teacher_dev: Optional[float] = None
    student_dev: Optional[float] = None
    majority_baseline: Optional[float] = None  # causal LMs: the unigram baseline's perplexity
    chance_band: Optional[float] = None
    greater_is_better: bool = True  # perplexity is not
    baseline: str = "majority baseline"
    labels: dict[str, Any] = field(default_factory=dict)
    tokenizers_agree: Optional[bool] = None
    layer_map: list[list[int]] = field(default_factory=list)
    stage1_layers: dict[str, dict[str, dict]] = field(default_factory=dict)
    initial_terms: dict[str, dict[str, float]] = field(default_factory=dict)
    suggested: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    blocking: bool = False

    def verdict(self) -> str:
        if self.blocking:
            return f"ted doctor: STOP: {self.warnings[0]}"
        if not self.warnings:
            return "ted doctor: OK: no problem found; the run looks healthy."
        return f"ted doctor: {len(self.warnings)} warning(s); read them before a long run."

    def as_json(self) -> dict:
        return {
            "metric": self.metric,
            "dev_examples": self.dev_examples,
            "teacher_dev": self.teacher_dev,
            "student_dev": self.student_dev,
            "majority_baseline": self.majority_baseline,
            "baseline": self.baseline,
            "greater_is_better": self.greater_is_better,
            "chance_band": self.chance_band,
            "labels": self.labels,
            "tokenizers_agree": self.tokenizers_agree,
            "layer_map": self.layer_map,
            "stage1_layers": self.stage1_layers,
            "initial_terms": self.initial_terms,
            "suggested": self.suggested,
            "warnings": self.warnings,
            "verdict": self.verdict(),
        }


def write_findings(findings: Findings, path: Optional[str]) -> None:
    if path:
        artifacts.atomic_write(path, json.dumps(findings.as_json(), indent=2, default=float) + "\n")


def report_text(findings: Findings) -> str:
    lines = []
    if findings.teacher_dev is not None:
        band = f", noise band +-{findings.chance_band:.3f}" if findings.chance_band else ""
        lines.append(
            f"teacher dev {findings.metric}: {findings.teacher_dev:.4f} on {findings.dev_examples} examples "
            f"({findings.baseline} {findings.majority_baseline:.4f}{band}; "
            f"{'higher' if findings.greater_is_better else 'lower'} is better)"
        )
    if findings.student_dev is not None:
        lines.append(f"student dev {findings.metric} before Stage II: {findings.student_dev:.4f}")
    if findings.labels.get("data"):
        lines.append(
            f"labels: data {findings.labels['data']}, teacher {findings.labels['teacher']}, "
            f"student {findings.labels['student']}"
        )
    lines.append(f"tokenizers agree: {findings.tokenizers_agree}; layer map (student, teacher): {findings.layer_map}")
    for role, layers in findings.stage1_layers.items():
        shown = ", ".join(
            f"{k}: {v['score']:.3f}{' (no better than the baseline)' if v['at_chance'] else ''}"
            for k, v in layers.items()
        )
        lines.append(f"Stage I {role} heads by layer: {shown}")
    for name, value in findings.initial_terms.items():
        lines.append(f"step-0 {name}: raw {value['raw']:.4g}, weighted {value['weighted']:.4g}")
    if findings.suggested:
        lines.append("suggested: " + ", ".join(f"--{k} {v:.3g}" for k, v in findings.suggested.items()))
    lines += [f"WARNING: {w}" for w in findings.warnings]
    lines.append(findings.verdict())
    return "\n".join(lines)
