"""End to end through the CLI: Alpaca files train, an unreachable hub fails fast, and the offline demo learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

XT = [sys.executable, "-m", "xt.cli"] if not (Path(sys.executable).parent / "xt").exists() \
    else [str(Path(sys.executable).parent / "xt")]
DEMO_CONFIG = ROOT / "plugins" / "xt-alpaca" / "xt_alpaca" / "configs" / "demo.yaml"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    env["XT_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(extra)
    return env


def _xt(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(XT + args, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_unreachable_hub_fails_in_seconds_pointing_to_data_files_and_the_demo(tmp_path: Path) -> None:
    # Nothing listens on port 9 of localhost: the hub probe is refused at once.
    env = _env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    started = time.monotonic()
    proc = _xt(["train", "--model", "baichuan2-tiny", "--dataset", "alpaca", "--method", "full",
                "--output", str(tmp_path / "run")], env, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, proc.stderr[-2000:]
    assert "tatsu-lab/alpaca" in error[0] and "--data-files" in error[0] and "--dataset alpaca-demo" in error[0]
    assert "Traceback" not in proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f}s (most of it is importing torch / DeepSpeed)"


def test_training_on_a_local_alpaca_file(tmp_path: Path, alpaca_file: Path) -> None:
    run = tmp_path / "run"
    proc = _xt(["train", "--model", "baichuan2-tiny", "--dataset", "alpaca", "--data-files", str(alpaca_file),
                "--template", "alpaca", "--method", "full", "--output", str(run),
                "--set", "max_steps=3", "--set", "max_length=256", "--set", "save_total_limit=0",
                "--set", "micro_batch_size=2", "--set", "log_steps=1"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["template"] == "alpaca" and info["dataset"] == "alpaca"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(loss == loss and 0 < loss < 20 for loss in losses)
    assert (run / "final" / "model.safetensors").is_file()


def _untrained_accuracy(prompts: list[tuple[str, str]]) -> float:
    """Exact match of the randomly initialised tiny model (the demo's starting point) on ``prompts``."""
    from xt.generation import generate_batch
    from xt.plugins import get_registry

    registry = get_registry()
    spec = registry.resolve_model("baichuan2-tiny")
    model, tokenizer = spec.load_model(None), spec.load_tokenizer(None)
    template = registry.get("templates", "alpaca-demo")
    scorer = registry.get("datasets", "alpaca-demo").scorer
    replies = generate_batch(model, tokenizer, template, [[{"role": "user", "content": p}] for p, _ in prompts],
                             max_new_tokens=8)
    return sum(scorer(r, ref) for r, (_, ref) in zip(replies, prompts)) / len(prompts)


@pytest.mark.slow
def test_demo_learns_heldout_prompts_and_chat_answers(tmp_path: Path) -> None:
    """A shorter `make demo`: train, read the held-out accuracy, then ask `xt chat` a held-out prompt."""
    from xt_alpaca.demo import generate_rows, heldout_prompt

    run = tmp_path / "demo"
    samples = 120
    proc = _xt(["train", str(DEMO_CONFIG), "--output", str(run), "--set", "epochs=5",
                "--set", f"eval_samples={samples}"], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy:" in proc.stderr
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval_accuracy" in line]
    accuracy = evals[-1]["eval_accuracy"]
    records = [json.loads(line) for line in next((run / "eval").glob("step-*.jsonl")).read_text().splitlines()]
    heldout = [r for r in records if r["kind"] == "heldout"]
    assert len(heldout) == samples
    # the eval prompts are the test split's, none of them seen in training
    train_prompts = {r["instruction"] for r in generate_rows("train", 42)}
    assert not any(r["prompt"].split("Instruction: ", 1)[1].rsplit("\nResponse:", 1)[0] in train_prompts
                   for r in heldout)
    test_rows = generate_rows("test", 42)
    baseline = _untrained_accuracy([(r["instruction"], r["output"]) for r in test_rows[:samples]])
    assert accuracy >= 0.5 and accuracy >= baseline + 0.4, (accuracy, baseline)
    # replies stop where they should: the correct ones are exactly the reference, nothing after it
    assert sum(r["prediction"] == r["reference"] for r in heldout) / samples == pytest.approx(accuracy)

    # `xt chat RUN --prompt` (what `make demo` runs) frames the prompt as training did: same reply as the eval
    prompt = heldout_prompt(42)
    record = next(r for r in heldout if r["prompt"].endswith(f"Instruction: {prompt}\nResponse:\n"))
    chat = _xt(["chat", str(run), "--prompt", prompt, "--max-new-tokens", "16"], _env(tmp_path))
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert chat.stdout.strip() == record["prediction"] != ""
