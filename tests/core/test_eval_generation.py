"""Eval during training: batched generation with a pad id outside the vocabulary, and how prompts are shown.

Llama-2's tokenizer names ``<pad>`` as id 32000 while the model has 32000 embedding rows; batched
generation left-pads, so it must pad with the same in-vocabulary id as training. The conftest's
SentencePiece tokenizer is laid out like Llama-2's (``<pad>`` added after the vocabulary), so a
model with exactly its vocabulary's rows reproduces the case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def llama2_model(tmp_path_factory, sp_tokenizer_dir) -> Path:
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama2-tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(sp_tokenizer_dir))
    vocab = spm.SentencePieceProcessor(model_file=str(sp_tokenizer_dir / "tokenizer.model")).get_piece_size()
    assert tokenizer.pad_token_id == vocab  # the case under test: a pad id the embedding does not have
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def test_safe_pad_id_is_inside_the_embedding(llama2_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xt.model.loading import safe_pad_id

    tokenizer = AutoTokenizer.from_pretrained(str(llama2_model))
    model = AutoModelForCausalLM.from_pretrained(str(llama2_model))
    assert safe_pad_id(tokenizer, model) == tokenizer.eos_token_id == 2


def test_eval_generates_in_batches_with_a_llama2_tokenizer(llama2_model, tmp_path, alpaca_file):
    from xt.config import from_dict
    from xt.train.loop import train

    rows = json.loads(alpaca_file.read_text())[:40]
    data = tmp_path / "alpaca_40.json"
    data.write_text(json.dumps(rows))
    cfg = from_dict(dict(model=str(llama2_model), dataset="alpaca", data_files=[str(data)], val_ratio=0.05,
                         eval_steps=1, eval_samples=1, eval_prompts=["Hi"], eval_max_new_tokens=4, max_steps=1,
                         max_length=256, output=str(tmp_path / "run"), data_cache_dir=str(tmp_path / "cache")))
    run_dir = train(cfg)
    records = [json.loads(line) for line in (run_dir / "eval" / "step-1.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["prompt", "heldout"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_eval_prompts_are_shown_from_a_word_start():
    from xt.train.evaluation import tail_words

    prompt = ("Below is an instruction that describes a task. Write a response that appropriately completes "
              "the request.\n\n### Instruction:\nDescribe a process of making crepes.\n\n### Response:\n")
    shown = tail_words(prompt)
    assert len(shown) <= 80 and shown.startswith("... ") and shown.endswith("### Response:")
    first = shown[4:].split(" ")[0]
    assert f" {first} " in " " + " ".join(prompt.split()) + " "  # a whole word, not the end of one
    assert tail_words("2+2") == "2+2"
