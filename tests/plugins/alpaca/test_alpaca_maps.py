"""xt-alpaca: the Alpaca map, the two templates, the registrations and conformance."""

from __future__ import annotations

import json

import pytest
from xt.plugins import get_registry
from xt.specs import RowError, conversation_problems
from xt.tokenizers import tiny_tokenizer
from xt_alpaca.maps import PREAMBLE_NO_INPUT, PREAMBLE_WITH_INPUT, map_alpaca_row

from tests.conftest import shared_path

# The two Stanford Alpaca prompts, written out from the release's README.
STANFORD_NO_INPUT = (PREAMBLE_NO_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Response:\n")
STANFORD_WITH_INPUT = (PREAMBLE_WITH_INPUT + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                       "### Response:\n")


def _render_prompt(template_name: str, conversation: dict) -> str:
    tok = tiny_tokenizer()
    template = get_registry().get("templates", template_name)
    messages = conversation["messages"][:-1]
    return tok.decode(template.encode_prompt(messages, tok), skip_special_tokens=True)


def test_alpaca_template_reproduces_both_stanford_prompts() -> None:
    plain = map_alpaca_row({"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well."})
    assert _render_prompt("alpaca", plain) == STANFORD_NO_INPUT.format(instruction="Give three tips for staying healthy.")
    with_input = map_alpaca_row({"instruction": "Classify the sentiment.", "input": "I love it!", "output": "positive"})
    assert _render_prompt("alpaca", with_input) == STANFORD_WITH_INPUT.format(instruction="Classify the sentiment.",
                                                                              input="I love it!")


def test_alpaca_template_labels_only_the_reply_and_eos() -> None:
    tok = tiny_tokenizer()
    template = get_registry().get("templates", "alpaca")
    conv = map_alpaca_row({"instruction": "Say hi.", "output": "hi there"})
    sample = template.encode(conv, tok)
    trained = [i for i, label in zip(sample["input_ids"], sample["labels"]) if label != -100]
    assert trained == tok.encode("hi there", add_special_tokens=False) + [tok.eos_token_id]
    prompt = template.encode_prompt(conv["messages"][:-1], tok)
    assert sample["input_ids"][: len(prompt)] == prompt  # inference prompt == training prefix
    assert template.stop_token_ids(tok) == [tok.eos_token_id]


def test_map_variants_system_history_and_missing_input() -> None:
    conv = map_alpaca_row({"instruction": "Translate: dog", "output": "chien", "system": "You translate.",
                           "history": [["Translate: cat", "chat"]]})
    assert conv == {"messages": [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate: cat"}, {"role": "assistant", "content": "chat"},
        {"role": "user", "content": "Translate: dog"}, {"role": "assistant", "content": "chien"}]}
    # input absent or null: the instruction alone, and no system message (the template's default applies)
    assert map_alpaca_row({"instruction": "Hi", "input": None, "output": "Hello"})["messages"][0]["role"] == "user"
    # a row's own system prompt wins over the with-input preamble; the input still gets its section
    own = map_alpaca_row({"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be brief."})
    assert own["messages"][0] == {"role": "system", "content": "Be brief."}
    assert own["messages"][1]["content"] == "Sum\n\n### Input:\n1 2"
    # only an input: it becomes the instruction
    assert map_alpaca_row({"instruction": "", "input": "2+2?", "output": "4"})["messages"][0]["content"] == "2+2?"


@pytest.mark.parametrize(("row", "reason"), [
    ({"input": "", "output": "x"}, "missing 'instruction'"),
    ({"instruction": "Do it", "input": ""}, "missing 'output'"),
    ({"instruction": "Do it", "output": "   "}, "empty 'output'"),
    ({"instruction": 3, "output": "x"}, "'instruction' must be a string"),
    ({"instruction": "Do it", "output": ["x"]}, "'output' must be a string"),
    ({"instruction": "Do it", "input": 5, "output": "x"}, "'input' must be a string"),
    ({"instruction": " ", "input": "", "output": "x"}, "empty 'instruction'"),
    ({"instruction": "Do it", "output": "x", "history": [["only one"]]}, "history turn 0"),
    ({"instruction": "Do it", "output": "x", "history": "no"}, "'history' must be a list"),
])
def test_bad_rows_raise_row_error_with_the_reason(row: dict, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        map_alpaca_row(row)


def test_every_row_of_the_shared_alpaca_file_maps() -> None:
    rows = json.loads(shared_path("data", "alpaca", "alpaca_en_demo.json").read_text())
    convs = [map_alpaca_row(r) for r in rows]
    assert all(not conversation_problems(c) for c in convs)
    with_input = sum(1 for r in rows if r["input"].strip())
    assert with_input > 0
    assert sum(1 for c in convs if c["messages"][0]["content"] == PREAMBLE_WITH_INPUT) == with_input


def test_registrations() -> None:
    registry = get_registry()
    expected = {"alpaca": "tatsu-lab/alpaca", "alpaca-cleaned": "yahma/alpaca-cleaned",
                "alpaca-gpt4": "vicgalle/alpaca-gpt4", "alpaca-zh": "shibing624/alpaca-zh",
                "code-alpaca": "sahil2801/CodeAlpaca-20k"}
    for name, hub_id in expected.items():
        spec = registry.get("datasets", name)
        assert spec.source == hub_id and spec.default_template == "alpaca" and spec.plugin == "xt-alpaca"
        assert spec.map_row is map_alpaca_row
        assert "--data-files" in spec.offline_hint and "alpaca-demo" in spec.offline_hint
    demo = registry.get("datasets", "alpaca-demo")
    assert demo.default_template == "alpaca-demo" and demo.scorer is not None and tuple(demo.splits) == ("train", "test")
    assert registry.get("templates", "alpaca-demo").name == "alpaca-demo"


def test_conformance_kit_passes() -> None:
    from xt.testing import check_plugin

    report = check_plugin("xt_alpaca")
    assert set(report.names("datasets")) >= {"alpaca", "alpaca-zh", "alpaca-demo"}
    assert set(report.names("templates")) == {"alpaca", "alpaca-demo"}


def test_the_demo_declares_the_plugin_its_model_comes_from() -> None:
    from pathlib import Path

    import pytest
    import yaml
    from xt.plugins import get_registry

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[3] / "plugins" / "xt-alpaca"
    demo = yaml.safe_load((root / "xt_alpaca" / "configs" / "demo.yaml").read_text())
    owner = get_registry().resolve_model(demo["model"]).plugin
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert owner != "xt-core" and any(req.startswith(owner) for req in extras["demo"]), (owner, extras)
