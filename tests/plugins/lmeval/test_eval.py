"""``xt eval`` (plugin xt-lmeval): a custom multiple-choice set on a tiny LoRA run scores exactly as an
independent scorer written here with plain transformers + peft; generation sets; clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from xt.cli import cli

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from test_export_support import load_base, make_run, random_adapter, save_base, tiny_tokenizer  # noqa: E402

QUESTIONS = [
    ("What is the colour of the sky", ["blue", "green", "red sky", "the sea"], 0),
    ("Which one is a number", ["one", "what", "is the", "sky blue"], "A"),
    ("Where do fish live", ["in the sea", "in the sky", "on a tree", "at home"], "in the sea"),
    ("What do you drink", ["water", "stone", "the red house", "sky"], 0),
    ("Which word is a colour", ["table", "green", "run fast", "the"], 1),
    ("What is two plus two", ["four", "five", "three or more", "one"], "A"),
    ("Who writes a book", ["a writer", "a tree", "the sea", "blue"], 0),
    ("What is hot", ["the sun", "ice", "snow and rain", "water"], 0),
    ("Which is an animal", ["a table", "a dog", "the sky", "red"], "B"),
    ("What do we read", ["a book", "a fish", "the sun in the sky", "green"], 0),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def gold(answer, choices) -> int:
    if isinstance(answer, int):
        return answer
    return choices.index(answer) if answer in choices else "ABCD".index(answer)


def chatml_prompt(question: str) -> str:
    """The chatml framing of one user turn, written out by hand (independent of xt's template code)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def independent_scores(base: Path, adapter: Path) -> list[list[float]]:
    """Per-choice log-likelihoods of each question with plain transformers + peft."""
    import torch
    from peft import PeftModel

    tokenizer = tiny_tokenizer()
    model = PeftModel.from_pretrained(load_base(base), str(adapter)).eval()
    scores = []
    for question, choices, _ in QUESTIONS:
        prompt = tokenizer.encode(chatml_prompt(question), add_special_tokens=False)
        row = []
        for choice in choices:
            target = tokenizer.encode(choice, add_special_tokens=False)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
            logprobs = torch.log_softmax(logits, -1)
            row.append(sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(target)))
        scores.append(row)
    return scores


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    base = save_base(root / "base", seed=3)
    adapter = random_adapter(base, root / "adapter", seed=4)
    run = make_run(root / "run", base, adapter, template="chatml")
    mc = write_jsonl(root / "quiz.jsonl", [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS])
    return {"root": root, "base": base, "adapter": adapter, "run": run, "mc": mc}


def test_multiple_choice_accuracy_equals_an_independent_scorer(lora_run):
    result = CliRunner().invoke(cli, ["eval", str(lora_run["run"]), "--data", str(lora_run["mc"]), "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    out = lora_run["run"] / "eval-results"
    record = json.loads((out / "results.json").read_text())
    scores = independent_scores(lora_run["base"], lora_run["adapter"])
    picks = [max(range(len(row)), key=row.__getitem__) for row in scores]
    expected = sum(p == gold(a, c) for p, (_, c, a) in zip(picks, QUESTIONS)) / len(QUESTIONS)
    assert 0 < expected < 1  # the random model gets some right and some wrong: the comparison can fail
    assert record["results"]["quiz"]["acc"] == pytest.approx(expected, abs=1e-12)
    assert record["template"] == "chatml" and record["n_samples"]["quiz"] == len(QUESTIONS)
    assert f"| quiz | acc | {expected:.4f} | {len(QUESTIONS)} |" in result.output  # the printed table
    samples = [json.loads(line) for line in (out / "samples-quiz.jsonl").read_text().splitlines()]
    by_question = {s["doc"]["question"]: [resp[0] for resp in s["responses"]] for s in samples}
    for (question, _, _), row in zip(QUESTIONS, scores):
        assert by_question[question] == pytest.approx(row, abs=1e-4)  # every choice's log-likelihood


def test_generation_set_model_folder_and_out(lora_run, tmp_path):
    rows = [{"question": q, "answer": c[gold(a, c)]} for q, c, a in QUESTIONS[:4]]
    data = write_jsonl(tmp_path / "gen.jsonl", rows)
    out = tmp_path / "res"
    result = CliRunner().invoke(cli, ["eval", str(lora_run["base"]), "--data", str(data), "--out", str(out),
                                      "--template", "chatml", "--max-new-tokens", "4", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples-gen.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    matched = sum(s["responses"][0].strip().lower() == s["target"].lower() for s in samples) / 4
    assert record["results"]["gen"]["exact_match"] == pytest.approx(matched)


@pytest.mark.parametrize("rows, message", [
    ([{"question": "q", "choices": ["a", "b"], "answer": 5}], "line 1: 'answer' 5 is not an index"),
    ([{"question": "q", "answer": "a"}, {"question": "r", "choices": ["a", "b"], "answer": 0}], "mixes multiple-choice"),
    ([{"prompt": "q"}], "line 1: 'question' is missing"),
])
def test_bad_sets_are_refused_before_loading(lora_run, tmp_path, rows, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    result = CliRunner().invoke(cli, ["eval", str(lora_run["run"]), "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_model_folder_needs_out_and_unknown_task_is_named(lora_run, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(lora_run["base"]), "--data", str(lora_run["mc"])])
    assert result.exit_code == 2 and "pass --out DIR" in result.output
    result = CliRunner().invoke(cli, ["eval", str(lora_run["run"]), "--tasks", "hellaswagg", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Unknown lm-eval task 'hellaswagg'. Did you mean 'hellaswag'?" in result.output


def test_a_named_task_without_local_data_fails_with_one_sentence(lora_run, tmp_path):
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "xt.cli", "eval", str(lora_run["run"]), "--tasks", "arc_easy",
                          "--limit", "2", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("Error: A task's data could not be loaded (")
    assert "put it in the local datasets cache or allow hub access." in out.stderr
    assert not (tmp_path / "o").exists()


def test_plugin_conformance():
    from xt.testing import check_plugin

    report = check_plugin("xt-lmeval")  # raises on any problem: torch on import, a broken command, ...
    assert report.distribution == "xt-lmeval" and report.problems == []
