"""The xt hooks of xt-alpaca (entry point ``alpaca``). Imports no torch."""

from __future__ import annotations

from typing import Any

from xt.api import DatasetSpec, hookimpl

from xt_alpaca import demo
from xt_alpaca.maps import map_alpaca_row
from xt_alpaca.templates import alpaca_template, demo_template

#: Said when a hub dataset of this plugin cannot be downloaded (read by the data loader).
OFFLINE_HINT = ("pass a local Alpaca-format file with --data-files PATH (json, jsonl, parquet or csv rows with "
                "instruction, input, output), or train on the offline demo set with --dataset alpaca-demo.")

#: (name, hub id, what it is) of the Alpaca-format datasets on the Hugging Face hub.
HUB_DATASETS = (
    ("alpaca", "tatsu-lab/alpaca", "Stanford Alpaca, 52k instructions generated with text-davinci-003"),
    ("alpaca-cleaned", "yahma/alpaca-cleaned", "Alpaca with hallucinations, empty outputs and other faults fixed"),
    ("alpaca-gpt4", "vicgalle/alpaca-gpt4", "the Alpaca instructions answered by GPT-4"),
    ("alpaca-zh", "shibing624/alpaca-zh", "Chinese Alpaca-style instructions answered by GPT-4"),
    ("code-alpaca", "sahil2801/CodeAlpaca-20k", "20k code instructions in Alpaca format"),
)

SAMPLE_ROWS = (
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep."},
    {"instruction": "Classify the sentiment of the sentence.", "input": "I love this book!", "output": "positive"},
    {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour",
     "system": "You are a translator.", "history": [["Translate to French: cat", "chat"]]},
)


@hookimpl
def dataset_map(register: Any) -> None:
    for name, hub_id, what in HUB_DATASETS:
        register(DatasetSpec(
            name=name,
            description=f"{what} ({hub_id}); offline: --data-files PATH with Alpaca-format rows, or alpaca-demo.",
            source=hub_id,
            map_row=map_alpaca_row,
            sample_rows=SAMPLE_ROWS,
            default_template="alpaca",
            offline_hint=OFFLINE_HINT, extra={"format": "alpaca"},
        ))
    register(DatasetSpec(
        name="alpaca-demo",
        description="Offline instruction set made in code (facts, number words, parity...): a tiny model "
                    "learns it in minutes on a CPU; exact-match accuracy on held-out phrasings.",
        map_row=map_alpaca_row,
        generate=demo.generate_rows,  # the data cache hashes demo.py, so edits rebuild it
        splits=demo.SPLITS,
        sample_rows=demo.SAMPLE_ROWS,
        default_template="alpaca-demo",
        scorer=demo.exact_match,
        extra={"recommended_config": "xt_alpaca/configs/demo.yaml"},
    ))


@hookimpl
def prompt_template(register: Any) -> None:
    register(alpaca_template())
    register(demo_template())
