"""Model set-up: generation leaves training state alone; the bitsandbytes AVX512-BF16 guard keeps
QLoRA gradients right after a no-grad forward; attention backend selection."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt.errors import XtError  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny-llama")


def build(model_dir, **overrides):
    from xt.config import from_dict
    from xt.model.setup import build_model
    from xt.plugins import get_registry

    register_test_plugin(model_dir)
    cfg = from_dict(dict(model=MODEL, dataset="d", **overrides))
    return build_model(cfg, get_registry().resolve_model(MODEL))


def test_generation_does_not_disturb_training_state(model_dir):
    from xt.generation import generate, generate_batch
    from xt.plugins import get_registry

    loaded = build(model_dir, method="lora", gradient_checkpointing=True, lora_dropout=0.1)
    model, tok = loaded.model, loaded.tokenizer
    template = get_registry().get("templates", "default")
    model.train()
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    reply = generate(model, tok, template, [{"role": "user", "content": "1+1"}], max_new_tokens=4, temperature=0.8)
    replies = generate_batch(model, tok, template, [[{"role": "user", "content": "2+2"}],
                                                     [{"role": "user", "content": "a long question here?"}]],
                             max_new_tokens=3)
    assert isinstance(reply, str) and len(replies) == 2
    assert model.training and all(m.training for m in model.modules())
    assert model.config.use_cache is False
    assert model.base_model.model.is_gradient_checkpointing
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_generation_stops_at_stop_words_and_strips_them(model_dir):
    from xt.generation import decode_reply
    from xt.tokenizers import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = tok.encode("yes STOP more", add_special_tokens=False)
    assert decode_reply(tok, ids, [2], ["STOP"]) == "yes"
    assert decode_reply(tok, ids + [2] + ids, [2], []) == tok.decode(ids).strip()


def _reference_fp32(qmodel):
    """The same PEFT model with every Linear4bit replaced by a float32 Linear of its dequantized weight."""
    import copy

    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    ref = copy.deepcopy(qmodel)
    for _name, module in list(ref.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = dequantize_4bit(child.weight.data, child.weight.quant_state).float()
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.weight = torch.nn.Parameter(weight, requires_grad=False)
                setattr(module, child_name, linear)
    return ref.float()


def _lora_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, use_cache=False)
    out.loss.backward()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def _qlora_grad_errors(model_dir, guard: bool) -> tuple[float, float]:
    """Max relative error of LoRA grads vs the dequantized fp32 reference, before and after a no-grad forward."""
    from bitsandbytes.nn import Linear4bit

    model = build(model_dir, method="qlora", lora_dropout=0.0).model
    assert any(isinstance(m, Linear4bit) for m in model.modules())
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, Linear4bit))
    if not guard:
        for m in model.modules():
            if isinstance(m, Linear4bit):
                m.support_avx512bf16_for_cpu = True
    for name, p in model.named_parameters():  # non-zero B so that every LoRA gradient is informative
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ref = _reference_fp32(model)
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (2, 12))
    batch = {"input_ids": ids, "labels": ids.clone()}
    model.train()
    ref.train()
    before, expected = _lora_grads(model, batch), _lora_grads(ref, batch)
    with torch.no_grad():  # an eval forward, as eval / generation during training does
        model.eval()
        model(input_ids=ids[:, :5])
        model.train()
    after = _lora_grads(model, batch)

    def err(grads):
        return max(float((grads[n] - expected[n]).abs().max()) / (float(expected[n].abs().max()) + 1e-12)
                   for n in expected)

    return err(before), err(after)


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """Layers at least one 4-bit block (64) wide, so bitsandbytes takes its packed CPU path."""
    return make_model_dir(tmp_path_factory.mktemp("wide") / "wide-llama", hidden_size=64)


def test_qlora_gradients_survive_a_no_grad_forward(wide_model_dir):
    before, after = _qlora_grad_errors(wide_model_dir, guard=True)
    assert before < 2e-2 and after < 2e-2, (before, after)


def test_without_the_guard_the_bug_shows_on_avx512bf16(wide_model_dir):
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never takes the faulty path")
    before, after = _qlora_grad_errors(wide_model_dir, guard=False)
    assert before < 2e-2 and after > 0.1, (before, after)  # what the guard prevents


def test_attention_backend_selection():
    from xt.model.loading import choose_attention, flash_attn_available

    assert choose_attention("auto") in ("sdpa", "flash_attention_2")
    assert choose_attention("eager") == "eager"
    if not flash_attn_available():
        assert choose_attention("auto") == "sdpa"
        with pytest.raises(XtError, match="flash-attn package and a CUDA GPU"):
            choose_attention("flash_attention_2")


def test_8bit_on_cpu_is_refused_clearly(model_dir):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(XtError, match="8-bit LoRA .* needs a GPU"):
        build(model_dir, method="lora", load_in_8bit=True)


def test_patterns_freeze_and_train(model_dir):
    loaded = build(model_dir, method="full", freeze_patterns=["model.layers.0.*"], train_patterns=["model.norm.*"])
    trainable = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.layers.0.") for n in trainable) and "model.norm.weight" in trainable
    with pytest.raises(XtError, match="matches no parameter"):
        build(model_dir, method="full", freeze_patterns=["vision.*"])


def test_no_bitsandbytes_warning_once_xt_loads_models():
    """peft imports bitsandbytes on every run; its CPU-kernel warning must not show on runs that do not quantize."""
    import subprocess
    import sys

    plain = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True, timeout=300)
    if "kernels-community" not in plain.stderr:
        pytest.skip("bitsandbytes prints no CPU-kernel warning on this CPU (no AVX512-BF16)")
    ours = subprocess.run([sys.executable, "-c", "import xt.model.setup, peft"], capture_output=True, text=True,
                          timeout=300)
    assert ours.returncode == 0 and "bitsandbytes" not in ours.stderr and "kernels-community" not in ours.stderr, \
        ours.stderr
