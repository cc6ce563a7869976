"""Small test assets built at test time, so that a bare clone of the repository runs the whole suite.

Nothing here downloads or reads ``../shared``: the text, the tokenizers trained on it, the images and
the checkpoints are all made from code below. ``tests/conftest.py`` wraps each builder in a
session-scoped fixture (built once per test run); tests use the fixtures, not these functions.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

SUBJECTS = ["the dog", "a small cat", "my neighbour", "the teacher", "a young bird", "the old farmer", "our team",
            "the river", "a tired student", "the baker", "her brother", "the little robot"]
VERBS = ["sees", "finds", "paints", "counts", "carries", "follows", "answers", "remembers", "opens", "builds",
         "washes", "reads"]
OBJECTS = ["three apples", "the red house", "a blue boat", "twelve stones", "the garden gate", "a long letter",
           "the quiet road", "42 books", "seven green bottles", "a warm coat", "the map of the city", "1,250 coins"]
PLACES = ["near the river", "in the morning", "after lunch", "at the market", "under the bridge", "on Monday",
          "before the rain", "with a smile", "in 1998", "at 7:30", "during the storm", "for 15 minutes"]
QUESTIONS = ["Why does {s} do that?", "How many times does {s} try?", "Where is {o} now?", "Is {o} still there?"]
INSTRUCTIONS = ["Describe {o}.", "Write a sentence about {s}.", "Summarise the text below.", "What does {s} see?",
                "Give two facts about {o}.", "Rewrite the input in simpler words.", "Count to {n}.",
                "Explain why {s} {v} {o}."]

#: id and size (width, height) of the two drawn photos; the names sort with the dog first.
IMAGES = {"dog": (375, 500), "two_cats": (640, 480)}


def sentence(rng: random.Random) -> str:
    """One English sentence with digits and punctuation, or a question."""
    s, v, o, p = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)
    if rng.random() < 0.2:
        return rng.choice(QUESTIONS).format(s=s, o=o)
    return f"{s[0].upper()}{s[1:]} {v} {o} {p}."


def corpus_lines(n: int = 400, seed: int = 0) -> list[str]:
    """Text to train the test tokenizers on: n lines of one to three sentences (400 lines: about 37 kB)."""
    rng = random.Random(seed)
    return [" ".join(sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def alpaca_rows(n: int = 300, seed: int = 1) -> list[dict[str, str]]:
    """Alpaca-format rows (instruction, input, output); about a third have an input; outputs 1-12 sentences."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s, v, o = rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)
        instruction = rng.choice(INSTRUCTIONS).format(s=s, v=v, o=o, n=rng.randint(2, 20))
        extra = " ".join(sentence(rng) for _ in range(rng.randint(1, 3))) if rng.random() < 0.35 else ""
        sentences = [sentence(rng) for _ in range(rng.randint(1, 12))]
        output = "\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4))
        rows.append({"instruction": instruction, "input": extra, "output": output})
    return rows


# ---------------------------------------------------------------------------------------------- tokenizers


def train_sentencepiece(folder: Path, vocab_size: int = 1000) -> Path:
    """A Llama-2 style SentencePiece BPE model and its ``LlamaTokenizer`` files in ``folder``.

    Trained with Llama-2's settings (byte fallback, split digits, identity normalisation, dummy prefix,
    unk 0 / bos 1 / eos 2, no pad piece) and the same tokenizer_config / special_tokens_map layout
    (add BOS, not EOS; a ``<pad>`` named by the map and added after the vocabulary).
    ``tests/test_assets.py`` checks these settings against the real Llama-2 files when ../shared is present.
    """
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=0.99995,
        max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    token = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    specials = {name: {"content": content, **token} for name, content in
                (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "use_fast": False,
              **{name: {"__type": "AddedToken", **value} for name, value in specials.items()}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": "<pad>"}, indent=2))
    return folder


def load_sentencepiece(folder: Path) -> Any:
    from transformers import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(str(folder))


BPE_END = "<|endoftext|>"


def train_bpe(path: Path, vocab_size: int = 1000) -> Path:
    """A GPT-2 style byte-level BPE ``tokenizer.json`` (same pre-tokenizer, post-processor and decoder as
    GPT-2's; ``<|endoftext|>`` as the one special token) at ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_END], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def load_bpe(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=BPE_END, bos_token=BPE_END)


# ---------------------------------------------------------------------------------------------- images, LLaVA rows


def draw_images(folder: Path) -> dict[str, Path]:
    """Two JPEG photos drawn with PIL (sizes from IMAGES): shapes on a gradient, so every pixel varies."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, (name, (width, height)) in enumerate(IMAGES.items()):
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 255) // width, (y * 255) // height, (x + y + 80 * index) % 256)
                       for y in range(height) for x in range(width)])
        draw = ImageDraw.Draw(image)
        draw.ellipse((width // 5, height // 4, width // 2, height // 2), fill=(140, 90, 40))
        draw.rectangle((width // 2, height // 2, width - 20, height - 30), fill=(30, 30 + 100 * index, 200))
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name], quality=90)
    return paths


def llava_rows(image_names: list[str], n: int = 8, seed: int = 2) -> list[dict[str, Any]]:
    """LLaVA-Instruct style rows (``id``, ``image``, ``conversations`` human/gpt); row i shows image i % 2."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"{rng.choice(QUESTIONS).format(s='the animal', o='the ball')}\n<image>"}]
        for _ in range(rng.randint(1, 3)):
            turns.append({"from": "gpt", "value": " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))})
            turns.append({"from": "human", "value": rng.choice(QUESTIONS).format(s="it", o="the shadow")})
        turns.pop()
        rows.append({"id": f"{i:012d}", "image": image_names[i % len(image_names)], "conversations": turns})
    return rows


def openai_rows(images: dict[str, Path], images_per_row: int) -> list[dict[str, Any]]:
    """Rows in XTuner's OpenAI-style multimodal format: ``image_url`` parts named ``resource/<file>``,
    one ``<IMG_CONTEXT>`` per image in the text part, then plain-text turns (English and Chinese)."""
    names = list(images)
    replies = [("What do the pictures have in common?", "Both show animals."),
               ("图片中的动物是什么颜色？", "它是棕色的。"), ("How many animals are there?", "Three in all.")]
    rows = []
    for i, (question, answer) in enumerate(replies):
        shown = [names[(i + k) % len(names)] for k in range(images_per_row)]
        parts = [{"type": "image_url", "image_url": {"url": f"resource/{images[name].name}",
                                                     "image_wh": list(IMAGES[name])}} for name in shown]
        parts.append({"type": "text", "text": "<IMG_CONTEXT>\n" * images_per_row + question})
        messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]
        if i % 2 == 0:
            messages += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Nothing else."}]
        rows.append({"id": i + 1, "messages": messages})
    return rows


# ---------------------------------------------------------------------------------------------- checkpoints

#: xt's tiny Baichuan2 preset behind each variant of the official layout.
BAICHUAN_PRESETS = {"tiny-7b-rope": "baichuan2-tiny", "tiny-13b-alibi": "baichuan2-tiny-13b"}


def save_baichuan_checkpoint(folder: Path, variant: str) -> Path:
    """A random tiny Baichuan2 written in the official Hugging Face layout (as the real checkpoints are).

    The variant shows only as the official configs show it: 7B (RoPE) has ``max_position_embeddings``,
    13B (ALiBi) does not; ``auto_map`` names the remote-code classes that xt must not need.
    """
    from xt.plugins import get_registry

    model = get_registry().get("models", BAICHUAN_PRESETS[variant]).load_model(None)
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("position_embedding")
    config["torch_dtype"] = config.pop("dtype")
    config["auto_map"] = {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                          "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
    config["tokenizer_class"] = "BaichuanTokenizer"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "user_token_id": 195,
                  "assistant_token_id": 196, "max_new_tokens": 20, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder
