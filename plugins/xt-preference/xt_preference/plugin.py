"""The xt hooks of xt-preference (entry point ``preference``). Imports no torch."""

from __future__ import annotations

from typing import Any

from xt.api import CollatorSpec, DatasetSpec, ObjectiveSpec, hookimpl

from xt_preference import demo, objectives, reward
from xt_preference.collate import make_padded_collator
from xt_preference.maps import (
    map_flat_row,
    map_hh_row,
    map_message_pair_row,
    map_preference_row,
    pair_problems,
    pair_sequences,
)

#: the objective whose rows these datasets give (pair rows), and so their default objective
PAIR_OBJECTIVE = "dpo"
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
        offline_hint=OFFLINE_HINT, objective=PAIR_OBJECTIVE))
    register(DatasetSpec(
        name="preference-flat",
        description="Flat preference rows (prompt or instruction + input, chosen, rejected, system?); --data-files.",
        map_row=map_flat_row, sample_rows=FLAT_SAMPLE_ROWS, offline_hint=OFFLINE_HINT, objective=PAIR_OBJECTIVE))
    register(DatasetSpec(
        name="ultrafeedback",
        description="UltraFeedback binarized (HuggingFaceH4/ultrafeedback_binarized; train: train_prefs, test: "
                    "test_prefs): chosen and rejected conversations sharing their prompt turns.",
        source="HuggingFaceH4/ultrafeedback_binarized", splits=("train", "test"),
        load_kwargs={"data_files": {"train": "data/train_prefs-*.parquet", "test": "data/test_prefs-*.parquet"}},
        map_row=map_message_pair_row, sample_rows=ULTRAFEEDBACK_SAMPLE_ROWS, offline_hint=OFFLINE_HINT,
        objective=PAIR_OBJECTIVE))
    register(DatasetSpec(
        name="hh-rlhf",
        description="Anthropic HH-RLHF (Anthropic/hh-rlhf): Human/Assistant transcripts that differ only in "
                    "the last reply.",
        source="Anthropic/hh-rlhf", splits=("train", "test"), map_row=map_hh_row, sample_rows=HH_SAMPLE_ROWS, offline_hint=OFFLINE_HINT,
        objective=PAIR_OBJECTIVE))
    register(DatasetSpec(
        name="preference-demo",
        description="Offline preference set made in code: correct vs off-topic answers to alpaca-demo prompts; "
                    "a tiny model learns it in minutes on a CPU (held-out reward accuracy).",
        map_row=map_flat_row,
        generate=demo.generate_rows,
        splits=demo.SPLITS,
        sample_rows=demo.SAMPLE_ROWS,
        default_template="alpaca-demo",
        objective=PAIR_OBJECTIVE))


@hookimpl
def collate(register: Any) -> None:
    register(CollatorSpec(
        name="preference-padded",
        description="Each sequence of a pair in its own padded row with attention_mask, plus the sequence tensors "
                    "(sequence_ids, sequence_groups, sequence_roles); for models that cannot take packed rows.",
        factory=make_padded_collator))


#: mapped pair rows the conformance kit runs the objectives on
PAIR_SAMPLE_ROWS = (
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "chosen": "Paris",
     "rejected": "green"},
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "What color is the sky?"}], "chosen": "blue", "rejected": "Monday"},
)


def _pair_objective(name: str, description: str, loss: Any, **fields: Any) -> ObjectiveSpec:
    return ObjectiveSpec(name=name, description=description, loss=loss, units=objectives.count_pairs,
                         sequences=pair_sequences, row_problems=pair_problems, sample_rows=PAIR_SAMPLE_ROWS,
                         **fields)


@hookimpl
def objective(register: Any) -> None:
    register(_pair_objective(
        "dpo", "Direct preference optimisation against a reference model: sigmoid loss (label_smoothing: "
               "conservative DPO) or loss_type ipo.",
        objectives.dpo_loss, reference=True, defaults=dict(objectives.DPO_DEFAULTS),
        check_options=objectives.check_dpo_options, precompute=objectives.reference_values))
    register(_pair_objective(
        "orpo", "Odds-ratio preference optimisation: NLL on the chosen reply + beta * odds-ratio loss; no reference.",
        objectives.orpo_loss, defaults=dict(objectives.ORPO_DEFAULTS),
        check_options=objectives.check_orpo_options))
    register(_pair_objective(
        "reward", "A reward model: a scalar head on the LM, Bradley-Terry loss; saved as sequence classification.",
        objectives.reward_loss, prepare_model=reward.add_score_head, save=reward.save_reward_model))
