"""``xt merge``: merged weights give the logits of base + adapter (LoRA and QLoRA), load without xt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from xt.cli import cli

try:
    from .test_export_support import load_base, logits, random_adapter, sample_ids, save_base, train_adapter
except ImportError:  # pragma: no cover
    from test_export_support import load_base, logits, random_adapter, sample_ids, save_base, train_adapter


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    base = save_base(root / "base", seed=3)
    return {
        "root": root,
        "base": base,
        "lora": random_adapter(base, root / "lora", seed=5),
        "qlora": train_adapter(base, root / "qlora", bits=4, steps=5, lr=5e-3),  # trained on a 4-bit base
    }


def _reference_logits(base: Path, adapter: Path, ids: list[int]):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base), str(adapter))  # fp32 base + unmerged adapter
    model.eval()
    return logits(model, ids)


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_merged_logits_equal_base_plus_adapter(pair, kind):
    out = pair["root"] / f"merged-{kind}"
    result = CliRunner().invoke(cli, ["merge", str(pair["base"]), str(pair[kind]), "--out", str(out),
                                      "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "generation_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / "xt_template.json").is_file()
    assert not (out / "adapter_config.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config

    ids = sample_ids()[0]
    expected = _reference_logits(pair["base"], pair[kind], ids)
    merged = logits(load_base(out), ids)
    base_only = logits(load_base(pair["base"]), ids)
    assert (merged - base_only).abs().max() > 1e-3  # the adapter really changed the model
    assert (merged - expected).abs().max() <= 1e-5


def test_merged_folder_loads_with_plain_transformers(pair):
    out = pair["root"] / "merged-plain"
    result = CliRunner().invoke(cli, ["merge", str(pair["base"]), str(pair["lora"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = sample_ids()[0]
    code = (
        "import sys, json, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig\n"
        f"path = {str(out)!r}\n"
        "model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "gen = GenerationConfig.from_pretrained(path)\n"
        f"ids = torch.tensor([{ids!r}])\n"
        "print(json.dumps({'xt': any(m == 'xt' or m.startswith('xt.') for m in sys.modules),\n"
        "  'sum': model(input_ids=ids).logits.double().sum().item(), 'eos': tok.eos_token, 'gen_eos': gen.eos_token_id}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["xt"] is False and data["eos"] == "</s>"
    assert data["gen_eos"] in (2, [2])
    expected = _reference_logits(pair["base"], pair["lora"], ids).double().sum().item()
    assert abs(data["sum"] - expected) <= 1e-5 * max(1.0, abs(expected))


def test_refuses_a_non_empty_out_and_keeps_it_intact(pair, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = CliRunner().invoke(cli, ["merge", str(pair["base"]), str(pair["lora"]), "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name != "taken"]  # no temp folder left behind

    result = CliRunner().invoke(cli, ["merge", str(pair["base"]), str(pair["lora"]), "--out", str(out),
                                      "--overwrite"])  # not an xt export: --overwrite does not own it
    assert result.exit_code == 2 and "was not written by 'xt export' / 'xt merge'" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    out = tmp_path / "merged"
    for dtype in ("fp32", "bf16"):  # the second replaces the first, a previous xt merge
        result = CliRunner().invoke(cli, ["merge", str(pair["base"]), str(pair["lora"]), "--out", str(out),
                                          "--overwrite", "--dtype", dtype])
        assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    import torch

    assert next(load_base(out).parameters()).dtype == torch.float32  # loaded as fp32 from bf16 weights
    assert json.loads((out / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"


def test_failed_merge_leaves_the_old_output(pair, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / ".xt-export").write_text("{}")  # an earlier xt export, which --overwrite may replace
    other = save_base(tmp_path / "other-base")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    wrong = LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    torch.manual_seed(0)
    wrong.save_pretrained(str(other))  # a base whose shapes do not fit the adapter
    result = CliRunner().invoke(cli, ["merge", str(other), str(pair["lora"]), "--out", str(out), "--overwrite"])
    assert result.exit_code != 0
    assert sorted(p.name for p in out.iterdir()) == [".xt-export", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "other-base"]


@pytest.mark.parametrize("args, message", [
    (["no-such-model-xyz", "ADAPTER"], "Unknown model"),
    (["BASE", "/nonexistent/adapter"], "does not exist"),
    (["BASE", "BASE"], "not a PEFT adapter folder"),
])
def test_merge_errors(pair, tmp_path, args, message):
    args = [str(pair["base"]) if a == "BASE" else str(pair["lora"]) if a == "ADAPTER" else a for a in args]
    result = CliRunner().invoke(cli, ["merge", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in result.output
