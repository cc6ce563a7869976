"""Shared pieces for the training tests: a tiny Llama saved to disk, a toy dataset, a test plugin.

Imported by the other test_train_* / test_model_* modules (and by driver scripts run in
subprocesses), so it holds no tests itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from xt import hookimpl
from xt.specs import DatasetSpec, ModelSpec

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PLUGIN_NAME = "xt-test-train"
MODEL = "tiny-llama"
DATASET = "tiny-sums"


def llama_config(vocab_size: int, hidden_size: int = 32) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def make_model_dir(folder: Path, hidden_size: int = 32) -> Path:
    """Save a tiny random Llama and the tiny tokenizer as a Hugging Face folder (idempotent)."""
    import torch
    from transformers import LlamaForCausalLM
    from xt.tokenizers import tiny_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(len(tokenizer), hidden_size))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def sum_rows(split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """Toy rows 'a+b' -> 'c', deterministic; the validation split uses other pairs."""
    pairs = [(a, b) for a in range(10) for b in range(10)]
    rows = [{"q": f"{a}+{b}", "a": str(a + b)} for a, b in pairs]
    return rows[:80] if split == "train" else rows[80:]


def map_sum_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]}


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


class TrainTestPlugin:
    """Registers the tiny model (from ``model_dir``) and the toy dataset."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)

    def config(self) -> Any:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.model_dir))

    @hookimpl
    def model_loader(self, register: Any) -> None:
        from xt.model.loading import load_hf_causal_lm, load_hf_tokenizer

        register(ModelSpec(
            name=MODEL, source=str(self.model_dir), load_model=load_hf_causal_lm, load_tokenizer=load_hf_tokenizer,
            config=self.config, default_template="default",
            stages={"warm": {"lr": 0.005, "max_steps": 3}},
        ))

    @hookimpl
    def dataset_map(self, register: Any) -> None:
        register(DatasetSpec(name=DATASET, generate=sum_rows, map_row=map_sum_row, splits=("train", "validation"),
                             scorer=exact_match))


def register_test_plugin(model_dir: Path) -> None:
    from xt.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if pm.get_plugin(PLUGIN_NAME) is None:
        pm.register(TrainTestPlugin(model_dir), name=PLUGIN_NAME)


DRIVER = """\
import sys
sys.path.insert(0, {tests!r})
from test_train_support import register_test_plugin
register_test_plugin({model_dir!r})
from xt.cli import main
sys.argv[0] = __file__
main()
"""


def write_driver(folder: Path, model_dir: Path) -> Path:
    """A script that registers the test plugin and runs ``xt`` with its arguments (for subprocesses)."""
    path = folder / "xt_driver.py"
    path.write_text(DRIVER.format(tests=str(Path(__file__).resolve().parent), model_dir=str(model_dir)))
    return path


def driver_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(XT_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    return env


def kill_at_first_checkpoint(driver: Path, args: list[str], out: Path, env: dict[str, str]) -> int:
    """Run ``xt`` (through ``driver``) with ``args --output out``, SIGKILL it once a checkpoint is written;
    returns the step of that checkpoint. Fails when the run ends before it could be killed."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, str(driver), *args, "--output", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "final").exists()
    return int(latest.read_text().split("-")[1])


def straight_and_resumed(driver: Path, args: list[str], work: Path, env: dict[str, str],
                         timeout: int = 300) -> tuple[Path, Path, int]:
    """The same run twice: straight through, and SIGKILLed at its first checkpoint then resumed.

    Returns (straight run dir, resumed run dir, the step it resumed from); both runs finished."""
    import subprocess

    straight, crashed = work / "straight", work / "crashed"
    done = subprocess.run([sys.executable, str(driver), *args, "--output", str(straight)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_from = kill_at_first_checkpoint(driver, args, crashed, env)
    again = subprocess.run([sys.executable, str(driver), "train", "--resume", str(crashed)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    assert again.returncode == 0, again.stderr[-3000:]
    return straight, crashed, resumed_from


def python() -> str:
    return sys.executable
