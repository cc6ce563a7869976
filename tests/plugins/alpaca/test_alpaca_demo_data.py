"""alpaca-demo: deterministic splits, held-out prompts answerable from training, scorer, demo_prompt."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from xt.plugins import get_registry
from xt.tokenizers import tiny_tokenizer
from xt_alpaca import demo


def test_same_seed_same_rows_other_seed_other_split() -> None:
    assert demo.generate_rows("train", 7) == demo.generate_rows("train", 7)
    assert demo.generate_rows("test", 7) == demo.generate_rows("test", 7)
    assert {r["instruction"] for r in demo.generate_rows("test", 7)} != \
        {r["instruction"] for r in demo.generate_rows("test", 8)}


def test_heldout_prompts_are_unseen_but_answerable() -> None:
    train, test = demo.generate_rows("train", 42), demo.generate_rows("test", 42)
    train_prompts = {r["instruction"] for r in train}
    assert len(test) > 500
    assert not train_prompts & {r["instruction"] for r in test}
    phrasings = {t.name: t.phrasings for t in demo.tasks()}
    # every held-out fact is taught in training under another phrasing, and every held-out phrasing
    # is taught with other facts
    train_facts = {(r["task"], r["output"], r["instruction"]) for r in train}
    for row in test[:200]:
        task = row["task"]
        used = [p for p in phrasings[task] if _matches(p, row["instruction"])]
        assert len(used) == 1
        x = _slot(used[0], row["instruction"])
        others = {p.format(x=x) for p in phrasings[task]} - {row["instruction"]}
        assert any((task, row["output"], o) in train_facts for o in others)
        assert any(_matches(used[0], r["instruction"]) for r in train if r["task"] == task)
    # every task is in both splits, and no prompt has two answers
    assert set(Counter(r["task"] for r in train)) == set(Counter(r["task"] for r in test)) == set(phrasings)
    answers: dict[str, set[str]] = {}
    for r in train + test:
        answers.setdefault(r["instruction"], set()).add(r["output"])
    assert all(len(a) == 1 for a in answers.values())


def _matches(phrasing: str, text: str) -> bool:
    head, tail = phrasing.split("{x}")
    return text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail)


def _slot(phrasing: str, text: str) -> str:
    head, tail = phrasing.split("{x}")
    return text[len(head): len(text) - len(tail)]


def test_answers_and_entities_are_whole_word_tokens() -> None:
    tok = tiny_tokenizer()
    for task in demo.tasks():
        for x, answer in task.facts:
            assert len(tok.encode(answer, add_special_tokens=False)) <= 3, (task.name, answer)
            if not x[0].isdigit() and "-" not in x:
                assert len(tok.encode(" " + x, add_special_tokens=False)) == 1, (task.name, x)


def test_number_words_and_scorer() -> None:
    assert [demo.number_words(n) for n in (0, 13, 40, 42, 99)] == ["zero", "thirteen", "forty", "forty-two",
                                                                    "ninety-nine"]
    assert demo.exact_match(" Paris ", "Paris") == 1.0
    assert demo.exact_match("Paris.", "Paris") == 1.0
    assert demo.exact_match("Paris is", "Paris") == 0.0
    assert demo.exact_match("paris", "Paris") == 0.0
    assert get_registry().get("datasets", "alpaca-demo").scorer("forty-two", "forty-two") == 1.0


def test_registered_generator_and_demo_prompt() -> None:
    spec = get_registry().get("datasets", "alpaca-demo")
    assert spec.generate("test", 42) == demo.generate_rows("test", 42)
    convs = [spec.map_row(r) for r in spec.generate("train", 42)[:20]]
    assert all(c["messages"][0]["role"] == "user" for c in convs)
    out = subprocess.run([sys.executable, "-m", "xt_alpaca.demo_prompt"], capture_output=True, text=True, check=True)
    prompt = out.stdout.strip()
    assert prompt == demo.heldout_prompt(42)
    assert prompt in {r["instruction"] for r in demo.generate_rows("test", 42)}
    assert prompt not in {r["instruction"] for r in demo.generate_rows("train", 42)}


def test_shipped_demo_config_is_valid_and_its_shown_prompts_are_held_out() -> None:
    from importlib import resources

    from xt.config import resolve_config

    path = resources.files("xt_alpaca").joinpath("configs", "demo.yaml")
    cfg = resolve_config(str(path))
    assert (cfg.model, cfg.dataset, cfg.template, cfg.method, cfg.eval_split) == \
        ("baichuan2-tiny", "alpaca-demo", "alpaca-demo", "full", "test")
    test = {r["instruction"] for r in demo.generate_rows("test", cfg.seed)}
    train = {r["instruction"] for r in demo.generate_rows("train", cfg.seed)}
    assert cfg.eval_prompts and all(p in test and p not in train for p in cfg.eval_prompts)
