#!/usr/bin/env bash
# Issue 14's real-data table: the shared MiniLM pair (all-MiniLM-L6-v2 -> paraphrase-MiniLM-L3-v2) on RTE, MRPC,
# STS-B, CoLA and SST-2 with 2,000 training examples (RTE has 2,490, the others more), 3 seeds, full dev sets:
# teacher, student, KD, LWD and TED with the paper's weights (configs/minilm/*.yaml), then TED with
# --balance_losses on the same teachers, students and Stage I folders; what `ted doctor` said about each run;
# `ted report` with the significance table, the Stage I and CKA plots.
#
#   bash benchmarks/results_table.sh            # RUN=runs/issue14 TRAIN=2000 DEV=100000 SEEDS="1 2 3" TASKS="rte ..."
#
# Many CPU hours on 2 cores (a 500-example RTE pilot took ~25 min for one seed of teacher, student, Stage I and
# TED at max_seq_length 96); resumable: re-running the same command reuses every finished stage.
# The doctor reads only the teacher / student / Stage I folders and step-0 losses, so running it after the
# pipeline gives what it would have said before Stage II.
set -euo pipefail
RUN=${RUN:-runs/issue14}
TRAIN=${TRAIN:-2000}
DEV=${DEV:-100000}  # more than any dev set: the full dev sets (the presets keep 400 rows of CoLA, SST-2, STS-B)
SEEDS=${SEEDS:-"1 2 3"}
TASKS=${TASKS:-"rte mrpc stsb cola sst2"}
TED=${TED:-ted}
mkdir -p "$RUN/doctor"
for task in $TASKS; do
    cfg=configs/minilm/$task.yaml
    # 1. teacher, student, Stage I, TED / KD / LWD with the paper's weights
    # shellcheck disable=SC2086
    $TED pipeline --config "$cfg" --seeds $SEEDS --max_train_samples "$TRAIN" --max_eval_samples "$DEV" \
        --output_dir "$RUN/paper"
    for seed in $SEEDS; do
        # 2. the doctor on the TED run of this seed
        $TED doctor --pipeline_config "$cfg" --output_dir "$RUN/paper" --seed "$seed" \
            --max_train_samples "$TRAIN" --max_eval_samples "$DEV" --json "$RUN/doctor/$task-seed$seed.json" | tee "$RUN/doctor/$task-seed$seed.txt"
        # 3. the finished stages again, as hard links: the pipeline reuses them by fingerprint and trains only TED
        mkdir -p "$RUN/balanced/$task/seed$seed"
        for role in teacher student teacher_stage1 student_stage1 kd lwd; do
            [ -e "$RUN/balanced/$task/seed$seed/$role" ] || cp -al "$RUN/paper/$task/seed$seed/$role" "$RUN/balanced/$task/seed$seed/"
        done
    done
    # shellcheck disable=SC2086
    $TED pipeline --config "$cfg" --seeds $SEEDS --max_train_samples "$TRAIN" --max_eval_samples "$DEV" \
        --output_dir "$RUN/balanced" --ted.balance_losses true --ted.balance_batches 1  # as docs/results.md ran
done
$TED report "$RUN/paper" --no_speed         # TED (paper weights) vs KD / LWD / student
$TED report "$RUN/balanced" --no_speed      # TED (--balance_losses) vs the same KD / LWD / student
