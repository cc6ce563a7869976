"""The reward model saved as sequence classification (loaded by plain transformers in a process without xt, its
logits equal the training rewards) and DPO's reference under LoRA (no second copy; the base model's log-probs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from xt.tokenizers import tiny_tokenizer
from xt.train.objective import reference_model
from xt_preference import objectives
from xt_preference.reward import add_score_head, save_reward_model

from tests.plugins.preference.pairs import (
    context,
    dataset_row,
    encoded_pairs,
    independent_logps,
    packed_batch,
    tiny_llama,
)

LOAD_WITHOUT_XT = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification
folder, sequences = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
width = max(len(s) for s in sequences)
pad = model.config.pad_token_id
ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=mask).logits
assert not [m for m in sys.modules if m == "xt" or m.startswith("xt.")], "xt was imported"
print(json.dumps({"class": type(model).__name__, "architectures": model.config.architectures,
                  "num_labels": model.config.num_labels, "pad": pad, "logits": logits[:, 0].tolist()}))
"""



def _lora(model, seed=3):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # init_lora_weights=False: B is random too, so the adapter changes the model
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_saved_reward_model_gives_the_training_rewards_in_plain_transformers(adapter, tmp_path):
    model = tiny_llama()
    model = _lora(model) if adapter else model
    add_score_head(model, context({}))
    samples = encoded_pairs()
    batch = packed_batch([dataset_row(samples[:3]), dataset_row(samples[3:])])
    with torch.no_grad():
        trained, _ = objectives.rewards(model, batch, pad_token_id=0)
    save_reward_model(model, tiny_tokenizer(), None, tmp_path / "final", adapter=adapter, context=context({}))

    sequences = [s["input_ids"] for sample in samples for s in sample]
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_XT, str(tmp_path / "final"), json.dumps(sequences)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "LlamaForSequenceClassification"
    assert loaded["architectures"] == ["LlamaForSequenceClassification"]
    assert loaded["num_labels"] == 1 and loaded["pad"] == 0
    assert torch.allclose(torch.tensor(loaded["logits"]), trained, atol=1e-5, rtol=1e-5)
    assert trained.std() > 1e-3  # the rewards differ between sequences: the comparison means something
    assert not list((tmp_path / "final").glob("adapter_*"))  # LoRA merged, no adapter files


def test_reward_head_is_the_only_new_trainable_module_under_lora():
    model = _lora(tiny_llama())
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    add_score_head(model, context({}))
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert after - before == {"base_model.model.score.weight"} and all("lora_" in n for n in before)
    assert model.get_base_model().score.weight.shape == (1, 32)


def test_reward_head_refuses_a_family_without_sequence_classification():
    from transformers import CodeGenConfig, CodeGenForCausalLM
    from xt.api import XtError

    codegen = CodeGenForCausalLM(CodeGenConfig(n_layer=1, n_embd=16, n_head=2, rotary_dim=4, vocab_size=64))
    with pytest.raises(XtError, match="transformers has none for model type 'codegen'"):
        add_score_head(codegen, context({}))
    assert not hasattr(codegen, "score")


def test_lora_reference_is_the_base_model_without_a_second_copy():
    base = tiny_llama()
    base_count = sum(p.numel() for p in base.parameters())
    policy = _lora(tiny_llama())
    lora_count = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in policy.parameters()) == base_count + lora_count  # one copy of the base weights
    assert lora_count < base_count / 10

    reference = reference_model(adapter=True, trained=lambda: policy)  # what xt train gives a LoRA run
    samples = encoded_pairs()
    batch = packed_batch([dataset_row(samples)])
    with torch.no_grad():
        ref_logps = objectives.reference_logps(batch, context({}, reference=reference))
        base_logps = torch.stack([independent_logps(base, s)[0] for sample in samples for s in sample])
        policy_logps, _ = objectives.sequence_logps_of(objectives.forward(policy, batch), batch)
    assert torch.allclose(ref_logps, base_logps, atol=1e-6, rtol=0)
    assert (policy_logps - base_logps).abs().max() > 1e-3  # the adapter is on outside the reference block
