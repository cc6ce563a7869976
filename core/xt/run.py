"""What a run directory knows about itself: ``RUN/run.json``.

Written by ``xt train`` when a run starts and updated when it finishes; read by ``xt chat``,
``xt merge`` and ``xt export`` so that ``xt chat RUN`` needs no other argument.

Layout of a run directory::

    RUN/config.yaml        the fully resolved TrainConfig (``xt train --config RUN/config.yaml`` repeats it)
    RUN/run.json           RunInfo below
    RUN/metrics.jsonl      one JSON object per logged step / eval
    RUN/tensorboard/       TensorBoard events
    RUN/loss.png           loss curve, written at the end
    RUN/eval/step-N.jsonl  generation samples (prompt, reference, prediction, correct)
    RUN/checkpoints/step-N DeepSpeed checkpoints (+ sampler / RNG state), the last K kept
    RUN/eval-results/      results of ``xt eval`` (results.json, results.md, samples), when a plugin provides it
    RUN/final/             the result: a PEFT adapter (adapter_config.json + adapter_model.safetensors)
                           or a full model (config.json + model.safetensors), always with the tokenizer,
                           generation_config.json and the chat template, loadable without xt
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xt.errors import XtError

RUN_FILE = "run.json"
EVAL_RESULTS_DIR = "eval-results"  # results.json: {"results": {task: {metric: value}}, ...}


@dataclass
class RunInfo:
    model: str                      # registered model name (or hub id / folder for the generic loader)
    model_source: str | None        # the hub id or folder the weights came from (None: built from a config)
    template: str                   # registered template name used for training (chat reuses it)
    method: str = "lora"            # lora | qlora | full
    dataset: str | None = None
    kind: str = "causal-lm"         # causal-lm | multimodal
    final_dir: str | None = None    # relative to the run dir; None until training finished
    adapter: bool = True            # final_dir holds a PEFT adapter (else a full model)
    status: str = "running"         # running | finished | failed
    xt_version: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)  # extra load_model kwargs the run used
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: str | os.PathLike) -> None:
        path = Path(run_dir) / RUN_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written run.json


def load_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read ``RUN/run.json``; a clear error when the folder is not a run directory."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise XtError(f"'{run_dir}' is not an xt run directory (no {RUN_FILE}); pass the --output folder of "
                      f"'xt train', or a model name / folder.")
    try:
        data = json.loads(path.read_text())
        known = set(RunInfo.__dataclass_fields__)
        return RunInfo(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise XtError(f"{path} is unreadable ({exc}); it was not written by this version of xt.") from exc


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / RUN_FILE).is_file()
