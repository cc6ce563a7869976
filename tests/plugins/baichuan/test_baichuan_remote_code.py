"""Baichuan2 results load in plain transformers without xt: ``final/`` and ``--to hf`` ship the plugin's
configuration / modeling / tokenization files with an ``auto_map`` (``trust_remote_code=True``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import xt_baichuan  # noqa: F401

SHIPPED = ("configuration_baichuan.py", "modeling_baichuan.py")
IDS = [[1, 5, 17, 42, 99, 7, 3, 150, 23, 11]]

#: Runs with a meta-path blocker: any import of xt, xt.* or xt_* fails, so only transformers can load.
NO_XT = textwrap.dedent("""
    import importlib.abc, json, sys

    class BlockXt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "xt" or name.startswith(("xt.", "xt_")):
                raise ImportError(f"{name} is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockXt())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    IDS = None
    models, tokenizer_dir, text, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    result = {"logits": {}, "classes": {}}
    for folder in models:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            result["logits"][folder] = model(torch.tensor(IDS)).logits
        result["classes"][folder] = type(model).__module__ + "." + type(model).__name__
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
    result["tokenizer"] = type(tokenizer).__name__
    result["ids"] = tokenizer(text).input_ids
    result["xt_imported"] = sorted(m for m in sys.modules if m == "xt" or m.startswith(("xt.", "xt_")))
    torch.save(result, out)
""").replace("IDS = None", "IDS = " + repr(IDS))


def _train(tmp: Path, name: str, model: str, method: str) -> Path:
    from xt.config import from_dict
    from xt.train.loop import train

    cfg = from_dict(dict(model=model, dataset="alpaca-demo", method=method, max_steps=1, max_length=64,
                         micro_batch_size=2, save_total_limit=0, lr=1e-2, output=str(tmp / name),
                         data_cache_dir=str(tmp / "cache")))
    return train(cfg)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.slow
def test_7b_and_13b_results_load_without_xt(tmp_path, sp_tokenizer_dir):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM
    from xt.cli import cli
    from xt_baichuan.remote_code.tokenization_baichuan import BaichuanTokenizer

    final_7b = _train(tmp_path, "full-7b", "baichuan2-tiny", "full") / "final"
    lora_13b = _train(tmp_path, "lora-13b", "baichuan2-tiny-13b", "lora")
    adapter = json.loads((lora_13b / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "baichuan2-tiny-13b"  # the preset, not a temporary folder
    readme = (lora_13b / "final" / "README.md").read_text()
    assert "`baichuan2-tiny-13b` is an xt preset" in readme and "xt export RUN --to hf" in readme
    hf_13b = tmp_path / "hf-13b"
    result = CliRunner().invoke(cli, ["export", str(lora_13b), "--to", "hf", "--out", str(hf_13b)])
    assert result.exit_code == 0, result.output
    tokenizer_dir = tmp_path / "tokenizer"
    BaichuanTokenizer(vocab_file=str(sp_tokenizer_dir / "tokenizer.model")).save_pretrained(
        str(tokenizer_dir))

    for folder in (final_7b, hf_13b):
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                                      "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
        for name in SHIPPED:
            assert not {"xt", "xt_baichuan"} & _imports(folder / name), name
    assert json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][0] == \
        "tokenization_baichuan.BaichuanTokenizer"
    assert not {"xt", "xt_baichuan"} & _imports(tokenizer_dir / "tokenization_baichuan.py")

    out = tmp_path / "plain.pt"
    text = "Baichuan2 loads without xt."
    env = {"HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", NO_XT, json.dumps([str(final_7b), str(hf_13b)]), str(tokenizer_dir),
                           text, str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(out)
    assert plain["xt_imported"] == [] and plain["tokenizer"] == "BaichuanTokenizer"
    assert plain["ids"] == BaichuanTokenizer.from_pretrained(str(tokenizer_dir))(text).input_ids
    for folder in (final_7b, hf_13b):
        assert plain["classes"][str(folder)].startswith("transformers_modules.")  # the shipped code, not xt's
        ours = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        assert type(ours).__module__ == "xt_baichuan.remote_code.modeling_baichuan"
        with torch.no_grad():
            logits = ours(torch.tensor(IDS)).logits
        assert (logits - plain["logits"][str(folder)]).abs().max().item() <= 1e-5
