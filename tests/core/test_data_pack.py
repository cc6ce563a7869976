"""Packing: whole samples, restarting positions, attention kept apart (sdpa), fill on alpaca."""

from __future__ import annotations

import json
import random

import pytest
import torch
from xt.data import DataOptions, build_dataset
from xt.data.collate import make_default_collator
from xt.data.pack import fill_ratio, pack_best_fit
from xt.model.packed import PACKED_SDPA, use_packed_sdpa
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX

try:
    from .test_data_support import alpaca_spec
except ImportError:
    from test_data_support import alpaca_spec


def test_best_fit_never_cuts_and_respects_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = pack_best_fit(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))  # every sample exactly once
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert fill_ratio(lengths, bins, 128) > 0.9
    with pytest.raises(ValueError):
        pack_best_fit([10, 200], 128)


@pytest.fixture(scope="module")
def alpaca_packed(tmp_path_factory, alpaca_file, sp_tokenizer):
    template = get_registry().get("templates", "default")
    options = DataOptions(max_length=1024, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return build_dataset(alpaca_spec([alpaca_file]), template, sp_tokenizer, options)


def test_alpaca_fill_and_whole_samples(alpaca_packed, alpaca_file, sp_tokenizer):
    ds = alpaca_packed
    assert ds.stats["fill"] >= 0.95
    assert ds.stats["samples"] == ds.stats["rows"] == len(json.loads(alpaca_file.read_text()))
    assert ds.stats["truncated"] == 0 and ds.stats["dropped"] == 0
    unpacked = build_dataset(alpaca_spec([alpaca_file]), get_registry().get("templates", "default"), sp_tokenizer,
                             DataOptions(max_length=1024, pack=False, use_cache=False))
    whole = sorted(tuple(s["input_ids"]) for s in unpacked)
    pieces = []
    for i in range(len(ds)):
        row = ds[i]
        assert len(row["input_ids"]) <= 1024
        starts = [j for j, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        assert len(starts) - 1 == ds.num_samples(i)
        assert ds.segment_lengths(i) == [b - a for a, b in zip(starts, starts[1:])]
        for a, b in zip(starts, starts[1:]):
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == IGNORE_INDEX  # nothing is learned across the boundary
            pieces.append(tuple(row["input_ids"][a:b]))
    assert sorted(pieces) == whole  # every sample whole, none cut, none lost


def _tiny_llama(vocab_size: int, attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    if attn == PACKED_SDPA:
        assert use_packed_sdpa(model)
    return model.eval()


def _short_samples(n, tokenizer):
    """n short samples of different lengths, templated with ``tokenizer``."""
    template = get_registry().get("templates", "default")
    conv = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": "Answer " * (i + 2)}]} for i in range(n)]
    out = []
    for c in conv:
        s = template.encode(c, tokenizer)
        out.append({"input_ids": s["input_ids"], "labels": [IGNORE_INDEX] + s["labels"][1:],
                    "position_ids": list(range(len(s["input_ids"])))})
    return out


def _pack(samples):
    return {"input_ids": [t for s in samples for t in s["input_ids"]],
            "labels": [t for s in samples for t in s["labels"]],
            "position_ids": [p for s in samples for p in s["position_ids"]]}


@pytest.mark.parametrize("attn", ["sdpa", PACKED_SDPA])
@torch.no_grad()
def test_packed_logits_and_loss_equal_separate_runs(attn, sp_tokenizer):
    model = _tiny_llama(len(sp_tokenizer), attn)
    samples = _short_samples(5, sp_tokenizer)
    rows = [_pack(samples[:3]), _pack(samples[3:])]  # two packed rows of different length: padding too
    batch = make_default_collator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch
    out = model(**batch, use_cache=False)
    separate_logits, loss_sum, count = [], 0.0, 0
    for s in samples:
        single = make_default_collator()([s])
        res = model(**single, use_cache=False)
        separate_logits.append(res.logits[0])
        n = sum(1 for t in s["labels"][1:] if t != IGNORE_INDEX)
        loss_sum += res.loss.item() * n
        count += n
    offsets = [0, len(samples[0]["input_ids"]), len(samples[0]["input_ids"]) + len(samples[1]["input_ids"])]
    for k, s in enumerate(samples):
        row, start = (0, offsets[k]) if k < 3 else (1, sum(len(x["input_ids"]) for x in samples[3:k]))
        got = out.logits[row, start:start + len(s["input_ids"])]
        assert (got - separate_logits[k]).abs().max().item() <= 1e-5
    assert abs(out.loss.item() - loss_sum / count) <= 1e-5

    # Flattened (one row, as flash-attn varlen needs) gives the same logits.
    flat = make_default_collator(flatten=True)(rows)
    assert flat["input_ids"].shape[0] == 1
    flat_out = model(**flat, use_cache=False)
    assert (flat_out.logits[0] - torch.cat(separate_logits)).abs().max().item() <= 1e-5

    # Control: with a plain all-ones mask the samples see each other, so the check above can fail.
    mixed = model(input_ids=batch["input_ids"][:1], attention_mask=torch.ones_like(batch["input_ids"][:1]),
                  use_cache=False)
    second = mixed.logits[0, offsets[1]:offsets[2]]
    assert (second - separate_logits[1]).abs().max().item() > 1e-3


def test_collator_pads_and_passes_images():
    collate = make_default_collator(pad_token_id=7, pad_to_multiple_of=4)
    batch = collate([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "images": ["a.jpg"]},
                     {"input_ids": [1, 5], "labels": [-100, 5], "images": []}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7], [1, 5, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [-100, 5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["position_ids"][:, :2].tolist() == [[0, 1], [0, 1]]
    assert batch["images"] == [["a.jpg"], []]
    packed = collate([{"input_ids": [1, 2, 1, 3, 4], "labels": [-100, 2, -100, 3, 4], "position_ids": [0, 1, 0, 1, 2]}])
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2]]  # the pad is its own segment
    assert packed["labels"].tolist()[0][5:] == [-100] * 3


def test_packing_keeps_images_in_order(tmp_path, sp_tokenizer):
    from xt.specs import DatasetSpec

    rows = [{"messages": [{"role": "user", "content": f"<image> q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             "images": [f"img{i}.jpg"]} for i in range(6)]
    path = tmp_path / "mm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    from xt.builtins import map_conversation_row

    spec = DatasetSpec(name="mm", map_row=map_conversation_row, data_files=[str(path)])
    ds = build_dataset(spec, get_registry().get("templates", "default"), sp_tokenizer,
                       DataOptions(max_length=64, cache_dir=str(tmp_path / "c")))
    images = [img for i in range(len(ds)) for img in ds[i]["images"]]
    assert sorted(images) == [f"img{i}.jpg" for i in range(6)]
    for i in range(len(ds)):
        assert ds[i]["images"] == sorted(ds[i]["images"], key=lambda s: int(s[3:-4]))
        assert len(ds[i]["images"]) == ds.num_samples(i)
    again = build_dataset(spec, get_registry().get("templates", "default"), sp_tokenizer,
                          DataOptions(max_length=64, cache_dir=str(tmp_path / "c")))
    assert again.stats["cached"] and [again[i]["images"] for i in range(len(again))] == [ds[i]["images"] for i in range(len(ds))]


def test_per_sample_attention_gives_the_dense_masks_gradients_and_saves_plain_configs(tmp_path, sp_tokenizer):
    samples = _short_samples(5, sp_tokenizer)
    batch = make_default_collator(pad_token_id=0)([_pack(samples[:3]), _pack(samples[3:])])
    grads = {}
    for attn in ("sdpa", PACKED_SDPA):
        model = _tiny_llama(len(sp_tokenizer), attn).train()
        model(**batch, use_cache=False).loss.backward()
        grads[attn] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads["sdpa"].items():
        assert (grad - grads[PACKED_SDPA][name]).abs().max().item() <= 1e-6, name
    assert model.config._attn_implementation == PACKED_SDPA
    model.save_pretrained(str(tmp_path / "saved"))
    assert PACKED_SDPA not in (tmp_path / "saved" / "config.json").read_text()  # loads without xt
    # Generation (a cache, one query token) goes through stock sdpa and matches it.
    prompt = torch.tensor([samples[0]["input_ids"][:6]])
    plain = _tiny_llama(len(sp_tokenizer), "sdpa").generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.eval().generate(prompt, max_new_tokens=5, do_sample=False), plain)


def test_per_sample_attention_finds_the_spans_once_per_forward_pass(monkeypatch, sp_tokenizer):
    import xt.model.packed

    calls = []
    found = xt.model.packed.segment_bounds
    monkeypatch.setattr(xt.model.packed, "segment_bounds", lambda ids: calls.append(ids.shape) or found(ids))
    model = _tiny_llama(len(sp_tokenizer), PACKED_SDPA)
    samples = _short_samples(5, sp_tokenizer)
    batch = make_default_collator(pad_token_id=0)([_pack(samples[:3]), _pack(samples[3:])])
    with torch.no_grad():
        first = model(**batch, use_cache=False).logits
        assert len(calls) == 1  # two layers, one reading of the spans
        batch["position_ids"][1, :] = torch.arange(batch["position_ids"].shape[1])  # in place: row 2 one sample
        second = model(**batch, use_cache=False).logits
    assert len(calls) == 2  # the changed tensor is read again
    assert (first[0] - second[0]).abs().max().item() <= 1e-6  # row 1 unchanged
    assert (first[1] - second[1]).abs().max().item() > 1e-3  # row 2's samples now see each other
