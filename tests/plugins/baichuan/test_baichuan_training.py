"""Training-side behaviour: LoRA, QLoRA, packing, gradient checkpointing, caches, the tiny presets."""

from __future__ import annotations

import pytest
import torch
import xt_baichuan  # noqa: F401


def _spec(name: str):
    from xt.plugins import get_registry

    return get_registry().get("models", name)


def _folder_model(variant: str, folder, **kwargs):
    """A model loaded from an official-layout folder through the real (7B or 13B) loader."""
    spec = _spec("baichuan2-7b" if variant == "tiny-7b-rope" else "baichuan2-13b")
    return spec.load_model(str(folder), **kwargs), spec


def _batch(vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (2, 12), generator=gen)


def _lora_step(model, targets, steps: int = 2) -> None:
    """A few LoRA steps: loss finite, LoRA weights move, base weights frozen and unchanged."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=list(targets), task_type="CAUSAL_LM"))
    adapted = {n.split(".")[-2] for n, _ in peft_model.named_modules() if n.endswith("lora_A")}
    assert adapted == set(targets)
    trainable = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = _batch(model.config.vocab_size)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(peft_model.named_parameters())
    assert any(not torch.equal(params[n], before) for n, before in trainable.items() if "lora_B" in n)
    for n, before in frozen.items():
        if params[n].dtype.is_floating_point:
            assert torch.equal(params[n], before), f"frozen {n} changed"


@pytest.mark.parametrize("source", ["preset:baichuan2-tiny", "folder:tiny-13b-alibi"])
def test_lora_training_step(source, baichuan_checkpoint):
    kind, name = source.split(":")
    if kind == "preset":
        spec = _spec(name)
        model = spec.load_model(None)
    else:
        model, spec = _folder_model(name, baichuan_checkpoint(name))
    assert tuple(spec.lora_targets) == ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
    _lora_step(model, spec.lora_targets)


def _qlora_model(source: str, baichuan_checkpoint):
    from transformers import BitsAndBytesConfig

    qconfig = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    kind, name = source.split(":")
    if kind == "preset":
        spec = _spec(name)
        return spec.load_model(None, quantization_config=qconfig), spec
    return _folder_model(name, baichuan_checkpoint(name), quantization_config=qconfig)


@pytest.mark.parametrize("source", ["preset:baichuan2-tiny-13b",
                                    "folder:tiny-7b-rope"])
def test_qlora_training_step(source, baichuan_checkpoint):
    import bitsandbytes as bnb
    from xt_baichuan.remote_code.modeling_baichuan import NormHead

    model, spec = _qlora_model(source, baichuan_checkpoint)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 5 * model.config.num_hidden_layers
    assert type(model.lm_head) is NormHead and model.lm_head.weight.dtype == torch.float32
    for module in quantized:
        module.support_avx512bf16_for_cpu = False  # see the rules: this CPU corrupts 4-bit grads otherwise
    _lora_step(model, spec.lora_targets)


@pytest.mark.parametrize("name", ["baichuan2-tiny", "baichuan2-tiny-13b"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_equal_separate_rows(name, attn):
    model = _spec(name).load_model(None, attn_implementation=attn).eval()
    gen = torch.Generator().manual_seed(3)
    lengths = (5, 9, 4)
    pieces = [torch.randint(3, model.config.vocab_size, (n,), generator=gen) for n in lengths]
    packed = torch.cat(pieces)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed_logits = model(packed, position_ids=positions).logits[0]
        packed_nocache = model(packed, position_ids=positions, use_cache=False).logits[0]
        separate = torch.cat([model(p[None]).logits[0] for p in pieces])
        unpacked = model(packed).logits[0]
    assert (packed_logits - separate).abs().max().item() <= 1e-5
    assert (packed_nocache - separate).abs().max().item() <= 1e-5
    assert (unpacked - separate).abs().max().item() > 1e-3  # without positions the rows would mix


@pytest.mark.parametrize("name", ["baichuan2-tiny", "baichuan2-tiny-13b"])
def test_gradient_checkpointing_same_gradients(name):
    spec = _spec(name)
    ids = _batch(len(spec.load_tokenizer(None)), seed=1)

    def grads(checkpointing: bool):
        model = spec.load_model(None)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.model.layers)
        model.train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, plain = grads(False)
    loss_ckpt, ckpt = grads(True)
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)


@pytest.mark.parametrize("name", ["baichuan2-tiny", "baichuan2-tiny-13b"])
def test_generate_with_dynamic_cache_and_left_padding(name):
    from transformers.cache_utils import DynamicCache

    model = _spec(name).load_model(None).eval()
    ids = _batch(model.config.vocab_size, seed=2)
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0  # left padded row
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(ids, attention_mask=mask, cache=DynamicCache(config=model.config), **kwargs)
    uncached = model.generate(ids, attention_mask=mask, use_cache=False, **kwargs)
    single = model.generate(ids[1:, 5:], attention_mask=mask[1:, 5:], **kwargs)
    assert torch.equal(cached, uncached)
    assert cached[1, ids.shape[1]:].tolist() == single[0, 7:].tolist()


def test_tiny_preset_contract():
    spec = _spec("baichuan2-tiny")
    assert _spec("baichuan2-tiny-7b") is spec and spec.source is None and spec.default_template is None
    tokenizer = spec.load_tokenizer(None)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    state = torch.random.get_rng_state()
    first = spec.load_model(None)
    assert torch.equal(torch.random.get_rng_state(), state)  # the fixed seed does not disturb the caller's RNG
    second = spec.load_model(None)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert first.config.vocab_size == len(tokenizer) and first.config.position_embedding == "rope"
    assert spec.config().vocab_size == len(tokenizer)
    assert 64 <= first.config.hidden_size <= 128 and 2 <= first.config.num_hidden_layers <= 4
    bigger = spec.load_model(None, dtype=torch.bfloat16, config_overrides={"hidden_size": 128, "num_hidden_layers": 3})
    assert bigger.dtype == torch.bfloat16 and bigger.config.hidden_size == 128 and len(bigger.model.layers) == 3
    assert torch.isfinite(bigger(torch.tensor([[5, 6, 7]])).logits.float()).all()
    alibi = _spec("baichuan2-tiny-13b").load_model(None)
    assert alibi.config.position_embedding == "alibi" and not hasattr(alibi.config, "max_position_embeddings")
    from xt.errors import XtError

    with pytest.raises(XtError, match="config_overrides"):
        spec.load_model(None, config_overrides={"position_embedding": "sinusoidal"})


def test_flash_attention_when_available():
    """Flash attention (RoPE variant) is optional: only checked where flash-attn and CUDA exist."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        pytest.skip("flash-attn / CUDA not installed (optional)")
    model = _spec("baichuan2-tiny").load_model(None, dtype=torch.bfloat16,
                                               attn_implementation="flash_attention_2").cuda().eval()
    reference = _spec("baichuan2-tiny").load_model(None, dtype=torch.bfloat16).cuda().eval()
    ids = _batch(model.config.vocab_size).cuda()
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max().item() < 5e-2
