"""``preference-demo``: an offline preference set a tiny model learns in minutes on a CPU.

How it is made: the prompts and correct answers are xt-alpaca's ``alpaca-demo`` rows (facts asked
through several phrasings; for each fact one phrasing is held out, so no ``validation`` prompt is
seen in ``train``). The *preferred* reply is the correct answer. The *dispreferred* reply is an answer
that belongs to another task (asked for the capital of Peru, it answers a colour, a number word or
a day): a fluent but off-topic answer, the systematic pattern to learn being "the answer must be the
kind of thing the question asks for". Its text is drawn, per row and reproducibly from the seed,
among the other tasks' answers whose length in characters is closest to the preferred one, so the
two replies have about the same length: which one is longer says nothing about which is preferred
(the tests check that a length rule scores near chance).

Rows are flat preference rows (``prompt``, ``chosen``, ``rejected``, plus ``task``) mapped by
:func:`xt_preference.maps.map_flat_row`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from xt_alpaca import demo as alpaca_demo

SPLITS = ("train", "validation")
DEFAULT_SEED = alpaca_demo.DEFAULT_SEED
#: which alpaca-demo split each split's prompts come from
_SOURCE_SPLIT = {"train": "train", "validation": "test"}
#: the dispreferred reply is drawn among this many other-task answers closest in length
_NEAREST = 6


def _answers_by_task() -> dict[str, list[str]]:
    answers: dict[str, set[str]] = defaultdict(set)
    for task in alpaca_demo.tasks():
        answers[task.name].update(answer for _, answer in task.facts)
    return {name: sorted(words) for name, words in answers.items()}


def _off_topic(answer: str, task: str, pool: dict[str, list[str]], rng: random.Random) -> str:
    """An answer of another task (never one of this task's), among the ``_NEAREST`` closest to ``answer`` in length."""
    candidates = sorted({w for name, words in pool.items() if name != task for w in words} - set(pool[task]))
    candidates.sort(key=lambda w: (abs(len(w) - len(answer)), w))
    return rng.choice(candidates[:_NEAREST])


def generate_rows(split: str = "train", seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """The rows of ``split`` ("train" or "validation") for ``seed``; the same seed gives the same rows."""
    if split not in SPLITS:
        raise ValueError(f"preference-demo has splits {', '.join(SPLITS)}, not {split!r}")
    rng = random.Random(f"{seed}-{split}-dispreferred")
    pool = _answers_by_task()
    rows = []
    for source in alpaca_demo.generate_rows(_SOURCE_SPLIT[split], seed):
        rejected = _off_topic(source["output"], source["task"], pool, rng)
        rows.append({"prompt": source["instruction"], "chosen": source["output"], "rejected": rejected,
                     "task": source["task"]})
    return rows


#: A few rows in the dataset's own format, for the conformance kit and docs.
SAMPLE_ROWS = (
    {"prompt": "What is the capital of France?", "chosen": "Paris", "rejected": "green", "task": "capital"},
    {"prompt": "Write 42 in words.", "chosen": "forty-two", "rejected": "September", "task": "to-words"},
    {"prompt": "Is 7 even or odd?", "chosen": "odd", "rejected": "cub", "task": "parity"},
)
