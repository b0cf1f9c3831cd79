#!/usr/bin/env bash
# Issue 11's acceptance run, offline on a CPU: the shared SmolLM2-135M teacher (30 layers, GGUF) -> a 15-layer
# student made by `ted init-student` (block influence), Stage I for both on WikiText-2 valid text, then TED, KD and
# LWD on the same tokens; teacher, initial student and the three distilled students scored on a prefix of the
# WikiText-2 raw test set (perplexity) and of LAMBADA (OpenAI: accuracy and perplexity).
#
#   bash benchmarks/lm_acceptance.sh      # RUN=runs/lm_acceptance STEPS1=16 STEPS2=24 WIKI_DOCS=3 LAMBADA=100
#
# Every stage's log, GNU time record (wall time, peak RSS) and result stay under $RUN; a rerun skips what is done.
# SAVE_EVERY=N checkpoints (and scores the dev blocks) every N Stage II steps instead of once at the end, so a
# long run that is stopped resumes from its last checkpoint when the same command is run again.
# Settings (all methods alike): block 128, batch 8 (1,024 tokens a step), AdamW lr 2e-4 with 2 warm-up steps and
# linear decay, KD temperature 1, --balance_losses (each distillation term weighted to equal the task loss on
# the first batch); filters on every 6th teacher layer (5, 11, 17, 23, 29) and every 3rd student layer (2, 5, 8, 11, 14).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${TED_SHARED_DIR:-$REPO/../shared}
RUN=${RUN:-runs/lm_acceptance}
TED=${TED:-ted}
STEPS1=${STEPS1:-16}     # Stage I optimizer steps (x 1,024 tokens)
STEPS2=${STEPS2:-24}     # Stage II optimizer steps (x 1,024 tokens)
WIKI_DOCS=${WIKI_DOCS:-3}
LAMBADA=${LAMBADA:-100}
SAVE_EVERY=${SAVE_EVERY:-}
TEACHER=$SHARED/models/smollm2-135m-instruct-q4_1
LM=$SHARED/data/lm
mkdir -p "$RUN"

# WikiText-2 valid (tokenised text, 3,760 lines): the first 3,400 lines train every stage, the rest is the dev set.
head -n 3400 "$LM/wikitext-2/valid.txt" > "$RUN/train.txt"
tail -n +3401 "$LM/wikitext-2/valid.txt" > "$RUN/dev.txt"

step() {  # step NAME COMMAND...: run once, with its log and GNU time record (wall time, peak RSS); a resumed
    local name=$1; shift  # step appends to both, one time record per attempt
    [ -e "$RUN/$name.done" ] && return 0
    echo "== $name: $*"
    /usr/bin/time -v -a -o "$RUN/$name.time" "$@" >> "$RUN/$name.log" 2>&1
    touch "$RUN/$name.done"
}
lm_data=(--task_name causal_lm --train_file "$RUN/train.txt" --validation_file "$RUN/dev.txt" --block_size 128
         --per_device_train_batch_size 8 --per_device_eval_batch_size 8 --max_eval_samples 32 --num_train_epochs 1
         --lr_scheduler_type linear --warmup_steps 2 --logging_steps 2 --seed 42 --disable_tqdm true)
distill=("${lm_data[@]}" --max_train_samples $((STEPS2 * 8)) --learning_rate 2e-4 --temperature 1 --kl_alpha 1
         --balance_losses true --balance_batches 1 --teacher_cache off)  # the documented runs balanced on one batch
[ -n "$SAVE_EVERY" ] && distill+=(--eval_strategy steps --eval_steps "$SAVE_EVERY" --save_strategy steps
                                  --save_steps "$SAVE_EVERY")

step init_student $TED init-student --teacher_model_name_or_path "$TEACHER" --num_layers 15 \
    --strategy block_influence --train_file "$RUN/train.txt" --output_dir "$RUN/student_init"
step teacher_stage1 $TED learn-filters --model_name_or_path "$TEACHER" --output_dir "$RUN/teacher_stage1" \
    "${lm_data[@]}" --max_train_samples $((STEPS1 * 8)) --learning_rate 1e-3 --filter_interval 6
step student_stage1 $TED learn-filters --model_name_or_path "$RUN/student_init" --output_dir "$RUN/student_stage1" \
    "${lm_data[@]}" --max_train_samples $((STEPS1 * 8)) --learning_rate 1e-3 --filter_interval 3
step ted $TED distill --method ted --model_name_or_path "$RUN/student_stage1" \
    --teacher_model_name_or_path "$RUN/teacher_stage1" --output_dir "$RUN/ted" "${distill[@]}" \
    --mse_alpha 1 --filter_interval 3 --teacher_filter_interval 6
step kd $TED distill --method kd --model_name_or_path "$RUN/student_init" --teacher_model_name_or_path "$TEACHER" \
    --output_dir "$RUN/kd" "${distill[@]}"
step lwd $TED distill --method lwd --model_name_or_path "$RUN/student_init" --teacher_model_name_or_path "$TEACHER" \
    --output_dir "$RUN/lwd" "${distill[@]}" --mse_alpha 1 --filter_interval 3 --teacher_filter_interval 6

for who in student_init ted kd lwd teacher; do
    model=$RUN/$who
    [ "$who" = teacher ] && model=$TEACHER
    step "eval_wikitext_$who" $TED lm-eval --model_name_or_path "$model" --task wikitext \
        --data "$LM/wikitext-2-raw/wiki.test.raw" --limit "$WIKI_DOCS" --context_length 1024 --stride 512 \
        --output_dir "$RUN/eval/$who/wikitext"
    step "eval_lambada_$who" $TED lm-eval --model_name_or_path "$model" --task lambada \
        --data "$LM/lambada_openai/lambada_test.jsonl" --limit "$LAMBADA" --output_dir "$RUN/eval/$who/lambada"
done
echo "done: $RUN"
