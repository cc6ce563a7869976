"""xt-preference data: the three row formats and every bad-row reason, the registrations, the demo set and the
padded collator."""

from __future__ import annotations

import pytest
import torch
from xt.plugins import get_registry
from xt.specs import RowError
from xt_preference import demo
from xt_preference.collate import make_padded_collator
from xt_preference.maps import map_flat_row, map_hh_row, map_message_pair_row, map_preference_row

from tests.plugins.preference.pairs import dataset_row, encoded_pairs, packed_batch

USER = {"role": "user", "content": "Name a primary colour."}
SYSTEM = {"role": "system", "content": "Be brief."}


def _conversation(*messages, reply):
    return list(messages) + [{"role": "assistant", "content": reply}]


# -------------------------------------------------------------------------------------------------- formats


def test_flat_rows_with_prompt_or_instruction_and_input_and_system():
    assert map_flat_row({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) == \
        {"messages": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
    row = map_flat_row({"instruction": "Translate.", "input": "cat", "chosen": "chat", "rejected": "dog",
                        "system": "You translate."})
    assert row["messages"] == [{"role": "system", "content": "You translate."},
                               {"role": "user", "content": "Translate.\n\ncat"}]
    assert map_flat_row({"instruction": "Hi", "input": "", "chosen": "a", "rejected": "b"})["messages"] == \
        [{"role": "user", "content": "Hi"}]


def test_message_lists_share_their_prompt_turns():
    turns = [SYSTEM, USER, {"role": "assistant", "content": "Red?"}, {"role": "user", "content": "Another."}]
    row = map_message_pair_row({"prompt": "Another.", "chosen": _conversation(*turns, reply="Blue."),
                                "rejected": _conversation(*turns, reply="Green.")})
    assert row == {"messages": turns, "chosen": "Blue.", "rejected": "Green."}
    assert map_preference_row({"chosen": _conversation(USER, reply="Red."),
                               "rejected": _conversation(USER, reply="Green.")})["chosen"] == "Red."


def test_hh_rlhf_transcripts_split_at_the_last_assistant_turn():
    prefix = "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Say yes."
    row = map_hh_row({"chosen": prefix + "\n\nAssistant: Yes.", "rejected": prefix + "\n\nAssistant: No."})
    assert row == {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                                {"role": "user", "content": "Say yes."}], "chosen": "Yes.", "rejected": "No."}
    assert map_preference_row({"chosen": prefix + "\n\nAssistant: Yes.", "rejected": prefix + "\n\nAssistant: No."}) \
        == row


BAD_ROWS = [
    (map_flat_row, {"chosen": "a", "rejected": "b"}, "no prompt"),
    (map_flat_row, {"prompt": "q", "instruction": "q", "chosen": "a", "rejected": "b"}, "both 'prompt' and 'instruction'"),
    (map_flat_row, {"prompt": " ", "chosen": "a", "rejected": "b"}, "empty 'prompt'"),
    (map_flat_row, {"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a string, got int"),
    (map_flat_row, {"prompt": "q", "rejected": "b"}, "missing 'chosen'"),
    (map_flat_row, {"prompt": "q", "chosen": "a"}, "missing 'rejected'"),
    (map_flat_row, {"prompt": "q", "chosen": "", "rejected": "b"}, "empty 'chosen'"),
    (map_flat_row, {"prompt": "q", "chosen": "a", "rejected": ["b"]}, "'rejected' must be a string, got list"),
    (map_flat_row, {"prompt": "q", "chosen": "a", "rejected": "a"}, "the same reply"),
    (map_flat_row, {"prompt": "q", "chosen": "a", "rejected": "b", "system": 1}, "'system' must be a string"),
    (map_message_pair_row, {"chosen": "x", "rejected": []}, "'chosen' must be a non-empty list"),
    (map_message_pair_row, {"chosen": [USER, "x"], "rejected": [USER]}, r"chosen\[1\] must be a message"),
    (map_message_pair_row, {"chosen": [{"role": "bot", "content": "x"}], "rejected": [USER]}, "role 'bot'"),
    (map_message_pair_row, {"chosen": [{"role": "user", "content": 1}], "rejected": [USER]}, "content must be a string"),
    (map_message_pair_row, {"chosen": [USER], "rejected": [USER]}, "must end with the assistant's reply"),
    (map_message_pair_row, {"chosen": [{"role": "assistant", "content": "x"}], "rejected": [USER]},
     "user turn right before"),
    (map_message_pair_row, {"chosen": _conversation(USER, reply=" "), "rejected": _conversation(USER, reply="b")},
     "final reply of 'chosen' is empty"),
    (map_message_pair_row, {"chosen": _conversation(SYSTEM, USER, reply="a"), "rejected": _conversation(USER, reply="b")},
     "differ before their final replies"),
    (map_message_pair_row, {"prompt": "Other?", "chosen": _conversation(USER, reply="a"),
                            "rejected": _conversation(USER, reply="b")}, "'prompt' is not the last user turn"),
    (map_message_pair_row, {"prompt": 1, "chosen": _conversation(USER, reply="a"),
                            "rejected": _conversation(USER, reply="b")}, "'prompt' must be a string"),
    (map_hh_row, {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "must each contain"),
    (map_hh_row, {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
     "differ before their last"),
    (map_hh_row, {"chosen": "Human: a\n\nAssistant: b", "rejected": "Human: a\n\nAssistant: c"},
     "must start with"),
    (map_hh_row, {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c",
                  "rejected": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: d"}, "exactly one Assistant turn"),
    (map_hh_row, {"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: d"},
     "final reply of 'chosen' is empty"),
    (map_hh_row, {"rejected": "\n\nHuman: a\n\nAssistant: d"}, "missing 'chosen'"),
]


@pytest.mark.parametrize("map_row,row,reason", BAD_ROWS, ids=[r for _, _, r in BAD_ROWS])
def test_every_bad_row_has_its_own_reason(map_row, row, reason):
    with pytest.raises(RowError, match=reason):
        map_row(row)


def test_registered_datasets_map_their_sample_rows_to_pair_rows():
    registry = get_registry()
    for name in ("preference-jsonl", "preference-flat", "ultrafeedback", "hh-rlhf", "preference-demo"):
        spec = registry.get("datasets", name)
        assert spec.plugin == "xt-preference" and spec.sample_rows
        for row in spec.sample_rows:
            pair = spec.map(row)
            assert pair["messages"][-1]["role"] == "user" and pair["chosen"] != pair["rejected"]
    assert registry.get("datasets", "ultrafeedback").source == "HuggingFaceH4/ultrafeedback_binarized"
    assert registry.get("datasets", "hh-rlhf").source == "Anthropic/hh-rlhf"
    assert registry.get("collators", "preference-padded").plugin == "xt-preference"


# ----------------------------------------------------------------------------------------------------- demo


def test_demo_splits_are_deterministic_held_out_and_not_told_apart_by_length():
    train, validation = demo.generate_rows("train", 42), demo.generate_rows("validation", 42)
    assert train == demo.generate_rows("train", 42) and train != demo.generate_rows("train", 7)
    assert len(validation) > 500 and not {r["prompt"] for r in train} & {r["prompt"] for r in validation}
    for rows in (train, validation):
        assert all(r["chosen"] != r["rejected"] for r in rows)
        longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in rows) / len(rows)
        shorter = sum(len(r["chosen"]) < len(r["rejected"]) for r in rows) / len(rows)
        assert longer < 0.2 and shorter < 0.2  # "pick the longer (or shorter) reply" is right on few rows
    answers = {t.name: {a for _, a in t.facts} for t in demo.alpaca_demo.tasks()}
    assert all(r["rejected"] not in answers[r["task"]] for r in validation)  # always an off-topic answer
    with pytest.raises(ValueError, match="train, validation"):
        demo.generate_rows("test")


# ------------------------------------------------------------------------------------------------- collator


def test_padded_collator_puts_each_sequence_in_its_own_row_with_the_packed_tensors():
    samples = encoded_pairs()
    rows = [dataset_row(samples[:3]), dataset_row(samples[3:])]
    padded = make_padded_collator(pad_token_id=0)(rows)
    packed = packed_batch(rows)
    sequences = [s for sample in samples for s in sample]
    assert padded["input_ids"].shape == (8, max(len(s["input_ids"]) for s in sequences))
    for i, sequence in enumerate(sequences):
        n = len(sequence["input_ids"])
        assert padded["input_ids"][i, :n].tolist() == sequence["input_ids"]
        assert padded["labels"][i, :n].tolist() == sequence["labels"]
        assert padded["attention_mask"][i].tolist() == [1] * n + [0] * (padded["input_ids"].size(1) - n)
        assert (padded["sequence_ids"][i, :n] == i).all() and (padded["sequence_ids"][i, n:] == -1).all()
    assert torch.equal(padded["sequence_groups"], packed["sequence_groups"])
    assert torch.equal(padded["sequence_roles"], packed["sequence_roles"])
    assert padded["sequence_groups"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with_ids = [dict(rows[0], sample_ids=[5, 6, 7]), dict(rows[1], sample_ids=[9])]
    assert make_padded_collator(pad_token_id=0)(with_ids)["sample_ids"].tolist() == [5, 6, 7, 9]


def test_pair_problems_and_sequences():
    from xt_preference.maps import pair_problems, pair_sequences

    row = {"messages": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"}
    assert pair_problems(row) == []
    assert pair_sequences(row) == [{"messages": [*row["messages"], {"role": "assistant", "content": reply}]}
                                   for reply in ("4", "5")]
    conversation = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    assert pair_problems(conversation) == ["the row is not a preference pair (no 'chosen' and 'rejected' replies): "
                                           "train a preference dataset (preference-jsonl, ultrafeedback, hh-rlhf, ...) "
                                           "or this one with --objective sft"]
    assert pair_problems({**row, "chosen": " "}) == ["'chosen' must be a non-empty string (the preferred reply)"]
    assert pair_problems({**row, "messages": conversation["messages"]}) == \
        ["'messages' must be the prompt turns, ending with a user turn"]
    assert pair_problems({**row, "rejected": "4"}) == \
        ["'chosen' and 'rejected' are the same reply: the pair carries no preference"]
    assert pair_problems({**row, "messages": [{"role": "bot", "content": "x"}, *row["messages"]]}) == \
        ["message 0 has role 'bot', expected one of system, user, assistant"]
    assert pair_problems(["x"]) == ["a pair row must be a dict, got list"]


def test_importing_the_plugin_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, xt_preference.plugin\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_conformance_kit_passes_the_objectives_datasets_and_collator():
    from xt.testing import check_plugin

    report = check_plugin("xt-preference", raise_on_problems=False)
    assert {spec.name for spec in report.specs["objectives"]} == {"dpo", "orpo", "reward"}
    assert report.problems == [] and report.warnings == []
