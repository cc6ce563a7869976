"""The assets that tests build for themselves (tests/assets.py, conftest fixtures) are faithful stand-ins.

Without ../shared: they round-trip text, are deterministic, and have the documented shapes. With it:
the built tokenizers and checkpoints have the same settings and layout as the real files they replace
(Llama-2's SentencePiece model, GPT-2's byte-level BPE, the official Baichuan2 checkpoints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import assets
from tests.conftest import ROOT, shared_path

#: Texts that round-trip (a Llama-2 style decode drops one leading space, as Llama-2's own does).
TEXTS = ["Hello world", "What is 2+2?\nIt is 4.", "Spaces  inside, a tab\tand Ünïcödé 猫 🙂 ", "x"]

#: SentencePiece trainer and normaliser settings that change how text is split or ids are assigned.
SP_SETTINGS = ("model_type", "byte_fallback", "split_digits", "split_by_whitespace", "split_by_number",
               "split_by_unicode_script", "treat_whitespace_as_suffix", "allow_whitespace_only_pieces",
               "max_sentencepiece_length", "unk_id", "bos_id", "eos_id", "pad_id", "unk_piece", "bos_piece",
               "eos_piece")
SP_NORMALISER = ("name", "add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces")


def _sp_model(path):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return model


def _pipeline(tokenizer) -> dict:
    """Everything of a fast tokenizer's backend except its vocabulary."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = {k: v for k, v in data.pop("model").items() if k not in ("vocab", "merges")}
    data.pop("added_tokens")
    return {**data, "model": model}


@pytest.mark.parametrize("name", ["sp_tokenizer", "bpe_tokenizer"])
def test_tokenizers_round_trip_any_text(name, request):
    tokenizer = request.getfixturevalue(name)
    for text in TEXTS + assets.corpus_lines(5, seed=9):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    common = tokenizer.encode(" the dog", add_special_tokens=False)
    assert len(common) <= 2  # trained: frequent words are whole pieces, not bytes


def test_built_assets_are_deterministic(tmp_path, sp_tokenizer_dir, bpe_tokenizer_file, images):
    again = assets.train_sentencepiece(tmp_path / "sp")
    assert (again / "tokenizer.model").read_bytes() == (sp_tokenizer_dir / "tokenizer.model").read_bytes()
    assert assets.train_bpe(tmp_path / "bpe.json").read_text() == bpe_tokenizer_file.read_text()
    redrawn = assets.draw_images(tmp_path / "images")
    assert all(redrawn[k].read_bytes() == images[k].read_bytes() for k in images)


def test_sentencepiece_tokenizer_contract(sp_tokenizer):
    assert (sp_tokenizer.unk_token_id, sp_tokenizer.bos_token_id, sp_tokenizer.eos_token_id) == (0, 1, 2)
    assert sp_tokenizer.pad_token == "<pad>" and sp_tokenizer.pad_token_id == len(sp_tokenizer) - 1
    ids = sp_tokenizer("Hello world").input_ids
    assert ids[0] == 1 and ids[-1] != 2  # BOS added, EOS not


def test_images_and_llava_rows(images, llava_file, openai_llava_files):
    from PIL import Image

    for name, size in assets.IMAGES.items():
        with Image.open(images[name]) as image:
            assert image.format == "JPEG" and image.size == size and len(image.getcolors(1 << 20)) > 1000
    rows = json.loads(llava_file.read_text())
    assert [row["image"] for row in rows[:2]] == [images["dog"].name, images["two_cats"].name]
    for row in rows:
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
    for count, path in openai_llava_files.items():
        for line in path.read_text().splitlines():
            parts = json.loads(line)["messages"][0]["content"]
            assert sum(p["type"] == "image_url" for p in parts) == parts[-1]["text"].count("<IMG_CONTEXT>") == count


def test_missing_shared_files_are_named_and_counted_at_the_end(tmp_path):
    test_file = tmp_path / "test_needs_shared.py"
    test_file.write_text("from tests.conftest import shared_path\n\n\ndef test_real():\n"
                         "    shared_path('no', 'such.file')\n\n\ndef test_built():\n    pass\n")
    env = {**os.environ, "XT_SHARED": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(tmp_path), str(test_file)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    missing = tmp_path / "absent" / "no" / "such.file"
    assert lines[-3].startswith(f"  test_needs_shared.py::test_real: {missing}"), lines[-3:]
    assert lines[-2] == f"1 test skipped for a missing shared file (shared folder: {tmp_path / 'absent'})"
    assert lines[-1].startswith("1 passed, 1 skipped")


# ---------------------------------------------------------------------------------------------- against ../shared


def test_sentencepiece_settings_equal_llama2(sp_tokenizer_dir, sp_tokenizer):
    from transformers import LlamaTokenizer

    real_dir = shared_path("tokenizers", "llama2")
    ours, real = _sp_model(sp_tokenizer_dir / "tokenizer.model"), _sp_model(real_dir / "tokenizer.model")
    for field in SP_SETTINGS:
        assert getattr(ours.trainer_spec, field) == getattr(real.trainer_spec, field), field
    for field in SP_NORMALISER:
        assert getattr(ours.normalizer_spec, field) == getattr(real.normalizer_spec, field), field
    llama = LlamaTokenizer.from_pretrained(str(real_dir))
    assert _pipeline(sp_tokenizer) == _pipeline(llama)
    assert sp_tokenizer.special_tokens_map == llama.special_tokens_map
    assert (sp_tokenizer.add_bos_token, sp_tokenizer.add_eos_token) == (llama.add_bos_token, llama.add_eos_token)
    assert sp_tokenizer.pad_token_id == len(sp_tokenizer) - 1 and llama.pad_token_id == len(llama) - 1


def test_bpe_pipeline_equals_gpt2(bpe_tokenizer):
    real = assets.load_bpe(shared_path("tokenizers", "gpt2", "tokenizer.json"))
    ours, gpt2 = _pipeline(bpe_tokenizer), _pipeline(real)
    for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[name] == gpt2[name], name
    for option in ("type", "unk_token", "fuse_unk", "byte_fallback", "dropout"):
        assert ours["model"][option] == gpt2["model"][option], option
    assert real.convert_tokens_to_ids(assets.BPE_END) in real.all_special_ids
    assert bpe_tokenizer.convert_tokens_to_ids(assets.BPE_END) in bpe_tokenizer.all_special_ids


def test_baichuan_checkpoints_have_the_official_layout(baichuan_checkpoint):
    from safetensors import safe_open

    for variant in assets.BAICHUAN_PRESETS:
        real, ours = shared_path("fixtures", "baichuan2", variant), baichuan_checkpoint(variant)
        real_config, our_config = (json.loads((f / "config.json").read_text()) for f in (real, ours))
        assert set(our_config) - {"_from_model_config", "gradient_checkpointing"} == \
            set(real_config) - {"_from_model_config", "gradient_checkpointing"}, variant
        for key in ("architectures", "auto_map", "model_type", "tokenizer_class", "torch_dtype"):
            assert our_config[key] == real_config[key], key
        generation = [json.loads((f / "generation_config.json").read_text()) for f in (real, ours)]
        assert generation[0].pop("transformers_version") and generation[0] == generation[1]
        tensors = []
        for folder in (real, ours):
            with safe_open(str(folder / "model.safetensors"), "pt") as weights:
                tensors.append({k: (weights.get_slice(k).get_dtype(), len(weights.get_slice(k).get_shape()))
                                for k in weights.keys()})
        assert tensors[0] == tensors[1], variant
