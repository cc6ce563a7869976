"""Both LLaVA stages through ``xt train`` on the shared LLaVA rows, then the result outside xt.

Rows of ``llava_instruct_100.json`` name COCO files that are not shipped; an image folder of
links maps row ``i`` onto one of the two shared photos (``i % 2``), so every row has a real image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import shared_path

ROWS = 8
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
def llava_data(tmp_path_factory) -> tuple[Path, Path]:
    """(data file with the first ROWS rows, image folder with one link per row's COCO name)."""
    shared = shared_path("data", "llava")
    rows = json.loads((shared / "llava_instruct_100.json").read_text())[:ROWS]
    photos = sorted((shared / "images").iterdir())
    root = tmp_path_factory.mktemp("llava-data")
    folder = root / "images"
    folder.mkdir()
    for i, row in enumerate(rows):
        os.symlink(photos[i % len(photos)], folder / row["image"])
    data = root / "rows.json"
    data.write_text(json.dumps(rows))
    return data, folder


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
def test_pretrain_then_finetune(llava_data, tmp_path, monkeypatch):
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

    image = str(sorted(shared_path("data", "llava", "images").iterdir())[0])
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
