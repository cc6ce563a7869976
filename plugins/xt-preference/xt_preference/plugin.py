"""The xt hooks of xt-preference (entry point ``preference``). Imports no torch."""

from __future__ import annotations

from typing import Any

from xt.api import CollatorSpec, DatasetSpec, hookimpl

from xt_preference import demo
from xt_preference.collate import make_padded_collator
from xt_preference.maps import map_flat_row, map_hh_row, map_message_pair_row, map_preference_row

#: the objective whose row shape these datasets produce (pair rows)
PAIR_ROWS = {"objective": "dpo"}
OFFLINE_HINT = ("pass a local preference file with --data-files PATH (json, jsonl, parquet or csv rows with "
                "prompt, chosen, rejected), or train on the offline demo set with --dataset preference-demo.")

FLAT_SAMPLE_ROWS = (
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "I don't know."},
    {"instruction": "Translate to French.", "input": "good morning", "chosen": "bonjour", "rejected": "guten Morgen",
     "system": "You are a translator."},
)
ULTRAFEEDBACK_SAMPLE_ROWS = (
    {"prompt": "Name a primary colour.",
     "chosen": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red."}],
     "rejected": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Green."}]},
)
HH_SAMPLE_ROWS = (
    {"chosen": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Say yes.\n\nAssistant: Yes.",
     "rejected": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Say yes.\n\nAssistant: No."},
)


@hookimpl
def dataset_map(register: Any) -> None:
    register(DatasetSpec(
        name="preference-jsonl", aliases=("preference",),
        description="Preference rows from --data-files: flat (prompt/instruction, chosen, rejected), "
                    "message lists with a shared prompt, or HH-RLHF transcripts.",
        map_row=map_preference_row, sample_rows=FLAT_SAMPLE_ROWS + ULTRAFEEDBACK_SAMPLE_ROWS + HH_SAMPLE_ROWS,
        offline_hint=OFFLINE_HINT, extra=PAIR_ROWS))
    register(DatasetSpec(
        name="preference-flat",
        description="Flat preference rows (prompt or instruction + input, chosen, rejected, system?); --data-files.",
        map_row=map_flat_row, sample_rows=FLAT_SAMPLE_ROWS, offline_hint=OFFLINE_HINT, extra=PAIR_ROWS))
    register(DatasetSpec(
        name="ultrafeedback",
        description="UltraFeedback binarized (HuggingFaceH4/ultrafeedback_binarized, split train_prefs): "
                    "chosen and rejected conversations sharing their prompt turns.",
        source="HuggingFaceH4/ultrafeedback_binarized", load_kwargs={"split": "train_prefs"},
        map_row=map_message_pair_row, sample_rows=ULTRAFEEDBACK_SAMPLE_ROWS, offline_hint=OFFLINE_HINT,
        extra=PAIR_ROWS))
    register(DatasetSpec(
        name="hh-rlhf",
        description="Anthropic HH-RLHF (Anthropic/hh-rlhf): Human/Assistant transcripts that differ only in "
                    "the last reply.",
        source="Anthropic/hh-rlhf", map_row=map_hh_row, sample_rows=HH_SAMPLE_ROWS, offline_hint=OFFLINE_HINT,
        extra=PAIR_ROWS))
    register(DatasetSpec(
        name="preference-demo",
        description="Offline preference set made in code: correct vs off-topic answers to alpaca-demo prompts; "
                    "a tiny model learns it in minutes on a CPU (held-out reward accuracy).",
        map_row=map_flat_row,
        generate=demo.generate_rows,
        splits=demo.SPLITS,
        sample_rows=demo.SAMPLE_ROWS,
        default_template="alpaca-demo",
        extra=PAIR_ROWS))


@hookimpl
def collate(register: Any) -> None:
    register(CollatorSpec(
        name="preference-padded",
        description="Each sequence of a pair in its own padded row with attention_mask, plus the sequence tensors "
                    "(sequence_ids, sequence_groups, sequence_roles); for models that cannot take packed rows.",
        factory=make_padded_collator))
