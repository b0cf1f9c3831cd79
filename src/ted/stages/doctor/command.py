"""The `ted doctor` command with `ted distill`'s options: load what distill loads, check, print, write --json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ted.errors import TedInputError
from ted.stages.doctor.context import build_context
from ted.stages.doctor.findings import Findings, report_text, write_findings
from ted.stages.doctor.measure import diagnose

if TYPE_CHECKING:
    from ted.settings.options import DataArguments, DistillArguments, DoctorArguments, FilterArguments, ModelArguments
    from ted.settings.training_args import TedTrainingArguments


def run_doctor(
    model_args: ModelArguments,
    data_args: DataArguments,
    filter_args: FilterArguments,
    distill_args: DistillArguments,
    doctor_args: DoctorArguments,
    training_args: TedTrainingArguments,
) -> Findings:
    """`ted doctor` with `ted distill`'s options: load what distill loads, check, print, write --json."""
    from ted.stages.distill import check_deepspeed_stage

    check_deepspeed_stage(training_args.deepspeed)
    if doctor_args.json and Path(doctor_args.json).is_dir():
        raise TedInputError(f"--json {doctor_args.json} is a folder; give a file name such as doctor.json.")
    try:
        ctx = build_context(model_args, data_args, filter_args, distill_args, training_args)
    except TedInputError as err:  # a mismatch the doctor exists to report (labels, tokenizers, layers)
        if not _is_pairing_problem(str(err)):
            raise
        findings = Findings(warnings=[str(err)], blocking=True)
        findings.tokenizers_agree = "vocabular" not in str(err)
    else:
        findings = diagnose(ctx, doctor_args.doctor_eval_samples, doctor_args.doctor_batches)
    write_findings(findings, doctor_args.json)
    print(report_text(findings))
    return findings


def _is_pairing_problem(message: str) -> bool:
    return any(word in message for word in ("vocabular", "label", "selected layers", "filters"))
