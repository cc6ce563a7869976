"""The training loop in-process on CPU: ZeRO 0/2/3, LoRA / QLoRA / full, gradient accumulation,
non-finite loss, and the saved result loading without xt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt.errors import XtError  # noqa: E402


def run(tmp: Path, name: str, model_dir: Path, **overrides) -> Path:
    from xt.config import from_dict
    from xt.train.loop import train

    register_test_plugin(model_dir)
    values = dict(model=MODEL, dataset=DATASET, max_steps=8, lr=1e-2, micro_batch_size=2, grad_accum=1,
                  max_length=64, warmup_steps=0, save_steps=0, save_total_limit=1, output=str(tmp / name),
                  data_cache_dir=str(tmp / "cache"), lora_alpha=32)
    values.update(overrides)
    return train(from_dict(values), overwrite=True)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def model_dir(workdir):
    return make_model_dir(workdir / "tiny-llama")


@pytest.fixture(scope="module")
def runs(workdir, model_dir):
    """One short run per (method, ZeRO stage) combination, shared by the tests below."""
    return {
        "lora-z0": run(workdir, "lora-z0", model_dir, method="lora", zero_stage=0, eval_steps=8, eval_samples=3,
                       eval_prompts=["2+2"], eval_max_new_tokens=3),
        "full-z2": run(workdir, "full-z2", model_dir, method="full", zero_stage=2, lr=3e-3),
        "full-z3": run(workdir, "full-z3", model_dir, method="full", zero_stage=3, lr=3e-3),
        "lora-z3": run(workdir, "lora-z3", model_dir, method="lora", zero_stage=3, max_steps=4),
        "qlora-z0": run(workdir, "qlora-z0", model_dir, method="qlora", zero_stage=0, max_steps=4, lr=2e-2),
    }


@pytest.mark.parametrize("name", ["lora-z0", "full-z2", "full-z3", "lora-z3", "qlora-z0"])
def test_each_method_and_zero_stage_reduces_the_loss(runs, name):
    run_dir = runs[name]
    curve = losses(run_dir)
    assert len(curve) == (4 if name in ("lora-z3", "qlora-z0") else 8)
    assert curve[-1] < curve[0] - 0.01, curve
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["final_dir"] == "final"
    final = run_dir / "final"
    weights = final / ("model.safetensors" if name.startswith("full") else "adapter_model.safetensors")
    assert weights.is_file() and (final / "generation_config.json").is_file() and (final / "xt_template.json").is_file()
    assert (run_dir / "loss.png").is_file() and (run_dir / "config.yaml").is_file()
    assert any((run_dir / "tensorboard").iterdir())


def test_zero3_saves_gathered_weights(runs):
    from safetensors.torch import load_file

    adapter = load_file(str(runs["lora-z3"] / "final" / "adapter_model.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    full = load_file(str(runs["full-z3"] / "final" / "model.safetensors"))
    ref = load_file(str(runs["full-z2"] / "final" / "model.safetensors"))
    assert set(full) == set(ref)
    assert all(full[k].shape == ref[k].shape for k in ref)  # nothing saved as an empty partition


def test_eval_writes_samples_and_accuracy(runs):
    run_dir = runs["lora-z0"]
    records = [json.loads(line) for line in (run_dir / "eval" / "step-8.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["prompt", "heldout", "heldout", "heldout"]
    assert all("correct" in r and r["reference"] for r in records[1:])
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert evals and "eval_accuracy" in evals[-1] and evals[-1]["eval_loss"] > 0


LOAD_WITHOUT_XT = """
import json, os, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
for final in sys.argv[1:]:
    tok = AutoTokenizer.from_pretrained(final)
    if os.path.exists(final + "/adapter_config.json"):
        base = json.load(open(final + "/adapter_config.json"))["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final)
    else:
        model = AutoModelForCausalLM.from_pretrained(final)
    text = tok.apply_chat_template([{"role": "user", "content": "1+2"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    print("OK", type(model).__name__, text.replace(chr(10), "|"))
assert not [m for m in sys.modules if m == "xt" or m.startswith("xt.")], "xt was imported"
"""


def test_result_loads_and_generates_without_xt(runs, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_XT)
    args = [sys.executable, str(script), str(runs["lora-z0"] / "final"), str(runs["full-z2"] / "final")]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK PeftModelForCausalLM <s><|user|>|1+2|<|assistant|>|" in out.stdout
    assert "OK LlamaForCausalLM <s><|user|>|1+2|<|assistant|>|" in out.stdout


def test_chat_template_matches_xt_framing(runs):
    from transformers import AutoTokenizer
    from xt.plugins import get_registry

    tok = AutoTokenizer.from_pretrained(str(runs["lora-z0"] / "final"))
    template = get_registry().get("templates", "default")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1"},
                {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok(rendered, add_special_tokens=False).input_ids == template.encode_prompt(messages, tok)


def test_grad_accumulation_matches_one_big_batch(workdir, model_dir):
    from safetensors.torch import load_file

    common = dict(method="full", max_steps=1, lr=1e-3, save_total_limit=0, pack=True, max_length=48)
    a = run(workdir, "acc-4x2", model_dir, micro_batch_size=2, grad_accum=4, **common)
    b = run(workdir, "acc-1x8", model_dir, micro_batch_size=8, grad_accum=1, **common)
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    base = load_file(str(model_dir / "model.safetensors"))
    moved = max(float((wa[k] - base[k]).abs().max()) for k in base)
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert moved > 1e-4 and diff < 1e-6, (moved, diff)
    assert losses(a)[0] == pytest.approx(losses(b)[0], rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(workdir, model_dir):
    with pytest.raises(XtError, match="The loss became (nan|inf)"):
        run(workdir, "nan", model_dir, method="full", lr=1e30, max_grad_norm=0.0, max_steps=6, save_steps=1,
            save_total_limit=1, weight_decay=0.0)
    ckpts = workdir / "nan" / "checkpoints"
    latest = (ckpts / "latest").read_text()
    assert (ckpts / latest / "xt_state.json").is_file()
    assert not (workdir / "nan" / "final").exists()
    assert json.loads((workdir / "nan" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("layout", ["packed", "grouped"])
def test_pack_auto_trains_on_the_chosen_layout(workdir, model_dir, monkeypatch, layout):
    import xt.data
    import xt.data.pipeline

    chosen = {"layout": layout, "cost_packed": 1.0, "cost_grouped": 1.0}
    monkeypatch.setattr(xt.data.pipeline, "choose_layout", lambda *args, **kwargs: chosen)
    grouping = []

    class Recording(xt.data.ResumableBatchSampler):
        def __init__(self, *args, **kwargs):
            grouping.append(kwargs["group_by_length"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(xt.data, "ResumableBatchSampler", Recording)
    run_dir = run(workdir, f"auto-{layout}", model_dir, method="full", max_steps=3, lr=1e-3, save_total_limit=0,
                  pack="auto", data_cache_dir=str(workdir / f"cache-auto-{layout}"))
    assert grouping == [layout == "grouped"]  # length-grouped batches exactly when the layout is not packed
    assert len(losses(run_dir)) == 3 and all(loss == loss for loss in losses(run_dir))


def _independent_grad_norm(model_dir: Path) -> float:
    """Global L2 gradient norm of the mean token loss over all 80 training rows, in plain torch."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xt.plugins import get_registry

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    from test_train_support import map_sum_row, sum_rows

    template = get_registry().get("templates", "default")
    encoded = [template.encode(map_sum_row(r), tokenizer) for r in sum_rows("train")]
    total = None
    tokens = 0
    for sample in encoded:
        ids = torch.tensor([sample["input_ids"]])
        labels = torch.tensor([sample["labels"]])[:, 1:]
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
        total = loss if total is None else total + loss
        tokens += int((labels != -100).sum())
    (total / tokens).backward()
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_grad_norm_is_logged_at_every_zero_stage(workdir, model_dir, stage):
    """One step over all 80 rows: the logged norm is the global norm of the full-batch gradient."""
    run_dir = run(workdir, f"gn-z{stage}", model_dir, method="full", zero_stage=stage, max_steps=1, pack=False,
                  micro_batch_size=80, save_total_limit=0)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(logged) == 1 and logged[0] > 0
    expected = _independent_grad_norm(model_dir)
    assert logged[0] == pytest.approx(expected, rel=1e-4), (logged[0], expected)
