"""The options of `ted init-student` (a layer-dropped student made from the teacher), torch-free like options.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ted.settings.options import option


@dataclass
class InitStudentArguments:
    _argument_group_name = "student initialisation options"

    teacher_model_name_or_path: Optional[str] = option(
        None, help="The teacher to copy layers from: a hub id, a Hugging Face folder or a ted stage folder."
    )
    gguf_file: Optional[str] = option(
        None, help="A GGUF file inside the teacher's folder to load (dequantised to float32) instead of safetensors."
    )
    num_layers: Optional[int] = option(
        None, help="How many teacher layers the student keeps (chosen by --strategy). Or name them with --layers."
    )
    strategy: Optional[str] = option(
        None,
        help="How --num_layers layers are chosen: uniform (layer i*L//N for i=0..N-1: every k-th from layer 0), "
        "first, last, or block_influence (ShortGPT: the layers that change the hidden state most on the "
        "--train_file text). Default: block_influence when --train_file is given, else uniform.",
    )
    layers: Optional[str] = option(
        None, help="The teacher layers to keep, comma-separated (e.g. 0,3,5), instead of --num_layers/--strategy."
    )
    train_file: Optional[str] = option(
        None, help="Plain text to measure block influence on, one sample per non-empty line (e.g. training text)."
    )
    influence_samples: int = option(32, help="Block influence: use at most this many non-empty lines of --train_file.")
    influence_max_tokens: int = option(
        512, help="Block influence: measure on at most this many tokens in all (lines are cut to fit)."
    )
    influence_max_length: int = option(256, help="Block influence: cut each line to at most this many tokens.")
    output_dir: Optional[str] = option(None, help="The student folder to write (a stock Hugging Face model folder).")
    overwrite_output_dir: bool = option(False, help="Replace --output_dir when it is a folder ted wrote.")
