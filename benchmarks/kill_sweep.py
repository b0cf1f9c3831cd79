"""Kill sweep: `ted pipeline` on tiny offline models, killed at random and at targeted points, then re-run.

Each trial starts a fresh run folder, kills the run (SIGKILL or SIGINT at a random time, or SIGKILL at a
named point through the TED_TEST_CRASH_AT hook, see ted.artifacts.crash_point), re-runs the same command
to the end, and checks that (1) it succeeds, (2) every stage's weights are bit-identical to an uninterrupted
run and its dev metrics and train_loss equal, (3) nothing is left over: no `*.incomplete`, `.*.tmp` or
`.*.old-*` anywhere in the run folder.

    .venv/bin/python benchmarks/kill_sweep.py --trials 24 --work /tmp/kill_sweep

Not a unit test (minutes); tests/test_resume.py covers the targeted points one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CONFIG = """
task: custom
seeds: [3]
teacher: ./t0
student: ./s0
common:
  train_file: ./data/train.csv
  validation_file: ./data/dev.csv
  max_seq_length: 32
  num_train_epochs: 2
  per_device_train_batch_size: 16
  per_device_eval_batch_size: 16
  dataloader_pin_memory: false
  logging_steps: 1
  learning_rate: 1.0e-3
  disable_tqdm: true
teacher_stage1: {filter_interval: 2}
student_stage1: {filter_interval: 1}
ted: {kl_alpha: 1, mse_alpha: 10}
kd: {kl_alpha: 1}
lwd: {kl_alpha: 1, mse_alpha: 5}
"""
# Named points and how many times each is passed in one pipeline run (7 stages, 2 checkpoints each).
TARGETS = {"after_rename": 7, "checkpoint_unmarked": 14}
WEIGHTS = ("model.safetensors", "filters.safetensors", "stage1_heads.safetensors")


def setup(work: Path) -> Path:
    import tiny

    work.mkdir(parents=True, exist_ok=True)
    tok = tiny.build_tokenizer()
    tiny.write_data(work / "data", n_train=32, n_dev=16)
    tiny.write_model(work / "t0", tok, "bert", layers=4, seed=0)
    tiny.write_model(work / "s0", tok, "bert", layers=2, seed=1)
    (work / "cfg.yaml").write_text(CONFIG)
    return work / "cfg.yaml"


def command(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ted", "pipeline", "--config", str(cfg), "--output_dir", str(out)]


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", **extra}


def run(cfg: Path, out: Path, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(command(cfg, out), env=env(**extra), capture_output=True, text=True, timeout=1200)


def kill_at_random(cfg: Path, out: Path, seconds: float, sig: int) -> tuple[int, bool]:
    """Exit code, and whether the signal was sent (False: the run had finished first)."""
    # A background shell starts jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt: restore it.
    proc = subprocess.Popen(
        command(cfg, out),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        proc.wait(timeout=seconds)
        return proc.returncode, False
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    return proc.wait(timeout=600), True


def leftovers(out: Path) -> list[str]:
    return [
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.endswith(".incomplete") or (p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name))
    ]


def outcome(out: Path) -> dict:
    """What must not depend on interruptions: weights (bytes), dev metrics and train_loss of every stage."""
    result = {}
    for stage in sorted(p for p in out.glob("*/seed*/*") if p.is_dir()):
        key = str(stage.relative_to(out))
        files = {name: (stage / name).read_bytes() for name in WEIGHTS if (stage / name).is_file()}
        evals = json.loads((stage / "eval_results.json").read_text())
        metrics = {k: v for k, v in evals.items() if "runtime" not in k and "per_second" not in k}
        loss = json.loads((stage / "train_results.json").read_text())["train_loss"]
        result[key] = (files, metrics, round(loss, 6))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--work", default="/tmp/ted_kill_sweep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    cfg = setup(work)
    start = time.time()
    ref = run(cfg, work / "reference")
    total = time.time() - start
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = outcome(work / "reference")
    print(f"reference run: {total:.1f} s, {len(expected)} stages")
    counts = {"trials": 0, "held": 0}
    kinds: dict[str, list[int]] = {}
    for trial in range(args.trials):
        out = work / f"trial{trial}"
        kind = ("random-SIGKILL", "random-SIGINT", "targeted")[trial % 3]
        if kind == "targeted":
            point = rng.choice(sorted(TARGETS))
            nth = rng.randint(1, TARGETS[point])
            label = f"{point}:{nth}"
            first = run(cfg, out, TED_TEST_CRASH_AT=label).returncode
        else:
            seconds = rng.uniform(0.25 * total, 0.85 * total)
            label = f"{kind}@{seconds:.1f}s"
            first, sent = kill_at_random(cfg, out, seconds, signal.SIGKILL if "KILL" in kind else signal.SIGINT)
            if not sent:
                label += " (finished first)"
        again = run(cfg, out)
        problems = []
        if again.returncode != 0:
            problems.append(f"re-run failed ({again.returncode}): {again.stderr.strip().splitlines()[-1:]}")
        else:
            got = outcome(out)
            if got != expected:
                problems.append("result differs: " + ", ".join(k for k in expected if got.get(k) != expected[k]))
        left = leftovers(out)
        if left:
            problems.append(f"leftovers: {left}")
        held = not problems
        counts["trials"] += 1
        counts["held"] += held
        if "finished first" in label:
            kind = "not killed (finished first)"
        kinds.setdefault(kind, [0, 0])
        kinds[kind][0] += 1
        kinds[kind][1] += held
        verdict = "held" if held else "FAILED: " + "; ".join(problems)
        print(f"trial {trial:2d} {label:28s} first exit {first:4d}  {verdict}", flush=True)
        if held:
            shutil.rmtree(out, ignore_errors=True)
    print(
        f"{counts['held']} of {counts['trials']} trials held; by kind: "
        + ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in kinds.items())
    )
    return 0 if counts["held"] == counts["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
