"""xt-baichuan against the official Baichuan2 reference outputs in shared/fixtures/baichuan2.

Every case of each checkpoint's reference.json: logits within 1e-4, losses within 1e-5, greedy
tokens identical; plus loading (Auto classes without remote code, safetensors and .bin) and saving.
These are tests of those specific files, so they read ../shared: one test per checkpoint, each check a
subtest (reported on its own), so a clone without ../shared skips two tests, each naming its folder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import xt_baichuan  # noqa: F401  (registers model_type baichuan with transformers)

from tests.conftest import shared_path

CHECKPOINTS = ("tiny-7b-rope", "tiny-13b-alibi")
LOGIT_ATOL = 1e-4
LOSS_ATOL = 1e-5


def _dir(name: str):
    return shared_path("fixtures", "baichuan2", name)


@pytest.fixture(scope="module", params=CHECKPOINTS)
def case(request):
    from transformers import AutoModelForCausalLM

    folder = _dir(request.param)
    model = AutoModelForCausalLM.from_pretrained(folder)  # no trust_remote_code: native classes
    model.eval()
    reference = json.loads((folder / "reference.json").read_text())
    return request.param, folder, model, reference


def _close(actual, expected, atol=LOGIT_ATOL):
    expected = torch.as_tensor(expected, dtype=torch.float32)
    assert actual.shape == expected.shape
    diff = (actual.float() - expected).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


def _sum_close(actual: float, expected: float):
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-3)


def check_native_class_and_variant(case):
    name, _, model, _ = case
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM, NormHead

    assert type(model) is BaichuanForCausalLM
    assert isinstance(model.lm_head, NormHead)
    assert model.config.position_embedding == ("rope" if "rope" in name else "alibi")


def check_sequences(case):
    _, _, model, reference = case
    for seq in reference["sequences"].values():
        ids = torch.tensor([seq["input_ids"]])
        with torch.no_grad():
            out = model(ids, labels=ids, output_hidden_states=True)
            ones = model(ids, attention_mask=torch.ones_like(ids)).logits
        logits = out.logits[0]
        assert out.loss.item() == pytest.approx(seq["loss_labels_eq_input_ids"], abs=LOSS_ATOL)
        _close(logits[-1], seq["logits_last_position"])
        _sum_close(logits.double().sum().item(), seq["logits_sum"])
        _sum_close(logits.double().abs().sum().item(), seq["logits_abs_sum"])
        assert logits.argmax(-1).tolist() == seq["logits_argmax_per_position"]
        assert (ones[0] - logits).abs().max().item() <= max(seq["max_abs_diff_with_all_ones_attention_mask"], 1e-5)
        if "logits_full" in seq:
            _close(logits, seq["logits_full"])
        sums = [[h.double().sum().item(), h.double().abs().sum().item()] for h in out.hidden_states]
        assert len(sums) == len(seq["hidden_states_sum_abs_sum"])
        for got, want in zip(sums, seq["hidden_states_sum_abs_sum"]):
            _sum_close(got[0], want[0])
            _sum_close(got[1], want[1])


def check_greedy_generation_with_and_without_cache(case):
    _, _, model, reference = case
    kwargs = dict(reference["meta"]["generation_kwargs"])
    for seq in reference["sequences"].values():
        ids = torch.tensor([seq["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        assert out[0, ids.shape[1]:].tolist() == seq["greedy_20_new_tokens"]
        if seq.get("greedy_nocache_matches"):
            kwargs_nocache = {**kwargs, "use_cache": False}
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs_nocache)
            assert out[0, ids.shape[1]:].tolist() == seq["greedy_20_new_tokens"]


def check_right_padded_batch(case, attn):
    _, _, model, reference = case
    batch = reference["batch_right_padded"]
    ids = torch.tensor(batch["input_ids"])
    mask = torch.tensor(batch["attention_mask"])
    model.config._attn_implementation = attn
    try:
        labels = ids.masked_fill(mask == 0, -100)
        with torch.no_grad():
            out = model(ids, attention_mask=mask, labels=labels)
            incl_pads = model(ids, attention_mask=mask, labels=ids).loss
    finally:
        model.config._attn_implementation = "sdpa"
    assert out.loss.item() == pytest.approx(batch["loss_labels_pad_as_minus100"], abs=LOSS_ATOL)
    assert incl_pads.item() == pytest.approx(batch["loss_labels_eq_input_ids_incl_pads"], abs=LOSS_ATOL)
    lengths = mask.sum(-1)
    last = torch.stack([out.logits[b, lengths[b] - 1] for b in range(ids.shape[0])])
    _close(last, batch["logits_last_valid_position_per_row"])
    valid = out.logits.double()[mask.bool()]
    _sum_close(valid.sum().item(), batch["logits_sum_valid_positions"])
    _sum_close(valid.abs().sum().item(), batch["logits_abs_sum_valid_positions"])
    # pad query rows follow the official per-variant behaviour, so even the pad logits match
    _sum_close(out.logits.double().sum().item(), batch["logits_sum_all_positions_incl_pads"])
    _sum_close(out.logits.double().abs().sum().item(), batch["logits_abs_sum_all_positions_incl_pads"])


def check_z_loss(case):
    _, _, model, reference = case
    z = reference["z_loss"]
    seq = torch.tensor([reference["sequences"]["33"]["input_ids"]])
    batch = reference["batch_right_padded"]
    ids = torch.tensor(batch["input_ids"])
    mask = torch.tensor(batch["attention_mask"])
    old = model.config.z_loss_weight
    model.config.z_loss_weight = z["z_loss_weight"]
    try:
        with torch.no_grad():
            loss_seq = model(seq, labels=seq).loss.item()
            loss_batch = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.item()
    finally:
        model.config.z_loss_weight = old
    assert loss_seq == pytest.approx(z["loss_seq33_labels_eq_input_ids"], abs=LOSS_ATOL)
    assert loss_batch == pytest.approx(z["loss_batch_right_padded_labels_pad_as_minus100"], abs=LOSS_ATOL)


def check_left_padded_generation(case):
    _, _, model, reference = case
    batch = reference["batch_left_padded_generation"]
    ids = torch.tensor(batch["input_ids"])
    mask = torch.tensor(batch["attention_mask"])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    _close(logits[:, -1], batch["logits_last_position_per_row"])
    out = model.generate(ids, attention_mask=mask, **reference["meta"]["generation_kwargs"])
    assert out[:, ids.shape[1]:].tolist() == batch["greedy_20_new_tokens"]
    assert batch["greedy_20_new_tokens"] == batch["unpadded_single_greedy_20_new_tokens"]


def check_train_mode_loss_and_head_not_mutated(case):
    _, _, model, reference = case
    ids = torch.tensor([reference["sequences"]["33"]["input_ids"]])
    stored = model.lm_head.weight.detach().clone()
    model.train()
    try:
        loss = model(ids, labels=ids).loss
        loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert loss.item() == pytest.approx(reference["train_mode_loss_seq33"], abs=LOSS_ATOL)
    head = reference["lm_head_after_eval_forward"]
    with torch.no_grad():
        model(ids)
    # the official code normalises the weight in place after an eval forward; we never modify it
    assert torch.equal(model.lm_head.weight, stored)
    stored_norms = stored.norm(dim=1)
    assert stored_norms.min().item() == pytest.approx(head["stored_row_norm_min"], rel=1e-6)
    assert stored_norms.max().item() == pytest.approx(head["stored_row_norm_max"], rel=1e-6)
    used = model.lm_head.normalized_weight().norm(dim=1)
    assert used.min().item() == pytest.approx(head["row_norm_min"], abs=1e-6)
    assert used.max().item() == pytest.approx(head["row_norm_max"], abs=1e-6)


def check_alibi_slopes_match_reference(case):
    from xt_baichuan.remote_code.modeling_baichuan import alibi_slopes

    _, folder, _, reference = case
    heads = json.loads((folder / "config.json").read_text())["num_attention_heads"]
    assert alibi_slopes(heads) == pytest.approx(reference["alibi_slopes"], rel=1e-7)


def check_bin_only_copy_loads_same_tensors(case, tmp_path):
    """The .bin files (single or sharded with an index) load through transformers' weights_only path."""
    from transformers import AutoModelForCausalLM

    _, folder, model, _ = case
    for item in folder.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, tmp_path / item.name)
    assert not (tmp_path / "model.safetensors").exists()
    from_bin = AutoModelForCausalLM.from_pretrained(tmp_path)
    ours = model.state_dict()
    theirs = from_bin.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def check_save_round_trip_keeps_official_layout(case, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, folder, model, reference = case
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "baichuan"
    assert saved["architectures"] == ["BaichuanForCausalLM"]
    assert ("max_position_embeddings" in saved) == (model.config.position_embedding == "rope")
    original = load_file(folder / "model.safetensors")
    written = load_file(tmp_path / "model.safetensors")
    assert set(original) == set(written)
    assert all(torch.equal(original[k], written[k]) for k in original)  # lm_head stays un-normalised
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([reference["sequences"]["7"]["input_ids"]])
    with torch.no_grad():
        _close(again(ids).logits[0], reference["sequences"]["7"]["logits_full"])


def test_official_checkpoint(case, subtests, tmp_path):
    """Every check above on one official checkpoint; each one is a subtest, reported on its own."""
    checks = {
        "native class and variant": lambda: check_native_class_and_variant(case),
        "sequences": lambda: check_sequences(case),
        "greedy generation with and without cache": lambda: check_greedy_generation_with_and_without_cache(case),
        "right-padded batch, sdpa": lambda: check_right_padded_batch(case, "sdpa"),
        "right-padded batch, eager": lambda: check_right_padded_batch(case, "eager"),
        "z-loss": lambda: check_z_loss(case),
        "left-padded generation": lambda: check_left_padded_generation(case),
        "train-mode loss, head not mutated": lambda: check_train_mode_loss_and_head_not_mutated(case),
        ".bin-only copy loads the same tensors": lambda: check_bin_only_copy_loads_same_tensors(
            case, _empty(tmp_path / "bin")),
        "save round trip keeps the official layout": lambda: check_save_round_trip_keeps_official_layout(
            case, _empty(tmp_path / "saved")),
    }
    if case[0] == "tiny-13b-alibi":
        checks["ALiBi slopes"] = lambda: check_alibi_slopes_match_reference(case)
    for name, check in checks.items():
        with subtests.test(msg=name):
            check()


def _empty(folder):
    folder.mkdir()
    return folder
