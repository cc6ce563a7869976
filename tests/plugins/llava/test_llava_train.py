"""Both LLaVA stages through ``xt train`` on LLaVA-Instruct style rows, then the result outside xt.

The rows and the two photos they show (row ``i`` shows photo ``i % 2``) are conftest's ``llava_file``
and ``images``, made at test time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

PROMPT = "What is in the picture?"
PLAIN_LOAD = textwrap.dedent("""
    import sys, torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    folder, image, out = sys.argv[1:4]
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sys.argv[4]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.save({"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"], "logits": logits,
                "new_tokens": generated.shape[1] - inputs["input_ids"].shape[1],
                "processor": type(processor).__name__,
                "xt_imported": sorted(m for m in sys.modules if m == "xt" or m.startswith(("xt.", "xt_")))}, out)
""")


@pytest.fixture(scope="module")
def llava_data(llava_file, images) -> tuple[Path, Path]:
    """(data file, image folder)."""
    return llava_file, images["dog"].parent


def _train(data: Path, folder: Path, out: Path, stage: str, monkeypatch, *extra: str) -> Path:
    from xt.config import resolve_config
    from xt.train.loop import train

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[3] / ".cache" / "torch_extensions"))
    cfg = resolve_config(None, {"model": "llava-tiny", "dataset": "llava", "data_files": [str(data)],
                                "output": str(out), "image_folder": str(folder)},
                         [f"stage={stage}", "max_length=64", "micro_batch_size=4", "max_steps=12", "save_total_limit=0",
                          "warmup_ratio=0", "use_data_cache=false", "log_steps=1", *extra])
    return train(cfg, overwrite=True)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def _base():
    from xt.plugins import get_registry

    return get_registry().get("models", "llava-tiny").load_model(None, dtype=torch.float32)


@pytest.mark.slow
def test_pretrain_then_finetune(llava_data, images, tmp_path, monkeypatch):
    data, folder = llava_data
    base = {n: p.detach().clone() for n, p in _base().named_parameters()}

    # ---- pretrain: only the projector learns; the result is a full HF llava folder
    pre = _train(data, folder, tmp_path / "pre", "pretrain", monkeypatch, "lr=1e-2")
    losses = _losses(pre)
    assert len(losses) == 12 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.01, losses
    from transformers import LlavaForConditionalGeneration

    trained = dict(LlavaForConditionalGeneration.from_pretrained(pre / "final", dtype=torch.float32).named_parameters())
    assert set(trained) == set(base)
    changed = {n for n in base if not torch.equal(base[n], trained[n])}
    assert changed and all("multi_modal_projector" in n for n in changed), sorted(changed)[:5]
    assert {n for n in base if "multi_modal_projector" in n} == changed

    # ---- plain transformers loads it (no xt) and its logits equal those of the model xt composes in memory
    from xt.plugins import get_registry
    from xt_llava.chat import answer, prepare_inputs

    image = str(images["dog"])
    result = tmp_path / "plain.pt"
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(pre / "final"), image, str(result), PROMPT],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = torch.load(result)
    assert plain["xt_imported"] == [] and plain["processor"] == "LlavaProcessor" and plain["new_tokens"] > 0
    spec = get_registry().get("models", "llava-tiny")
    composed = spec.load_model(None, dtype=torch.float32, projector=str(pre)).eval()
    processor = spec.load_tokenizer(None)
    template = get_registry().get("templates", "default")
    inputs = prepare_inputs(processor, template, image, [{"role": "user", "content": PROMPT}])
    assert torch.equal(inputs["input_ids"], plain["input_ids"])
    assert int((inputs["input_ids"] == composed.config.image_token_id).sum()) == processor.tokens_per_image == 4
    assert torch.allclose(inputs["pixel_values"], plain["pixel_values"], atol=1e-6)
    with torch.no_grad():
        logits = composed(**inputs).logits
    assert (logits - plain["logits"]).abs().max().item() <= 1e-5
    assert isinstance(answer(composed, processor, template, image, [{"role": "user", "content": PROMPT}],
                             max_new_tokens=3), str)

    # ---- finetune with LoRA from the pretrained projector: LLM adapters + projector learn, encoder frozen
    ft = _train(data, folder, tmp_path / "ft", "finetune", monkeypatch, "lr=1e-2", f"model_args.projector={pre}")
    losses = _losses(ft)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    from peft import PeftModel

    start = spec.load_model(None, dtype=torch.float32, projector=str(pre))
    before = {n: p.detach().clone() for n, p in start.named_parameters()}
    tuned = PeftModel.from_pretrained(start, str(ft / "final"))
    after = {n.replace("base_model.model.", "", 1): p for n, p in tuned.named_parameters()}
    vision = [n for n in before if "vision_tower" in n]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    assert not any("lora_" in n and "vision_tower" in n for n in after)
    assert any("lora_" in n and "language_model" in n for n in after)
    projector = {n for n in after if "multi_modal_projector.modules_to_save" in n}
    assert projector and any(not torch.equal(after[n], before[n.replace("modules_to_save.default.", "")])
                             for n in projector)


def test_preset_configs_name_their_architecture():
    from xt.plugins import get_registry

    for name in ("llava-tiny", "llava-vicuna-7b", "llava-1.5-7b"):
        assert get_registry().get("models", name).config().architectures == ["LlavaForConditionalGeneration"]


@pytest.mark.slow
def test_lora_run_exports_to_lmdeploy(llava_data, tmp_path, monkeypatch):
    """An adapter run has no config.json of its own: the engine is chosen from the preset's config()."""
    from click.testing import CliRunner
    from xt.cli import cli

    data, folder = llava_data
    run = _train(data, folder, tmp_path / "ft", "finetune", monkeypatch, "max_steps=2")
    assert json.loads((run / "run.json").read_text())["adapter"] is True
    out = tmp_path / "lmdeploy"
    monkeypatch.setenv("XT_LMDEPLOY_TABLE", "builtin")
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "lmdeploy", "--out", str(out), "--set", "dtype=fp32"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "xt_lmdeploy.json").read_text())
    assert (info["backend"], info["architecture"]) == ("pytorch", "LlavaForConditionalGeneration")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


@pytest.mark.parametrize("stage", [None, "pretrain", "finetune"])
@pytest.mark.parametrize("method", [None, "lora", "qlora", "full"])
def test_dry_run_trainable_count_equals_the_real_model(stage, method):
    """The plan's trainable count is the real model's requires_grad count, for every stage and method."""
    from xt.config import resolve_config
    from xt.model.setup import build_model, count_parameters
    from xt.plugins import get_registry
    from xt.train.plan import count_for_run

    cfg = resolve_config(None, {"model": "llava-tiny", "dataset": "llava", "stage": stage, "method": method}, [])
    spec = get_registry().resolve_model("llava-tiny")
    planned = count_for_run(spec.config(), cfg, spec)
    total, trainable = count_parameters(build_model(cfg, spec).model)
    assert planned.trainable == trainable
    assert planned.total == 486_464 and planned.hidden_size == 64 and planned.num_layers == 2
    if stage == "pretrain" and method is None:
        assert trainable == 6_272  # the projector only
