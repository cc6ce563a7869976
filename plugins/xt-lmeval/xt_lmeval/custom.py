"""Custom local eval sets (jsonl) -> validated rows and lm-eval task configs.

Multiple choice: ``{"question": str, "choices": [str, ...], "answer": index | letter | choice text}``.
Generation: ``{"question": str, "answer": str}`` (scored by exact match of the reply).
The question is the user turn; a choice (or the generated answer) is the assistant reply.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xt.api import XtError

MULTIPLE_CHOICE, GENERATION = "multiple_choice", "generation"


@dataclass
class CustomSet:
    name: str           # the task name in results (the file's stem)
    kind: str           # MULTIPLE_CHOICE | GENERATION
    rows: list[dict[str, Any]]  # normalized: question, answer (index for multiple choice), choices


def gold_index(answer: Any, choices: list[str]) -> int | None:
    """The answer as an index into ``choices``: an int, a letter (A = 0) or the text of a choice."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer if 0 <= answer < len(choices) else None
    if isinstance(answer, str):
        text = answer.strip()
        if text in choices:
            return choices.index(text)
        if len(text) == 1 and text.upper() in string.ascii_uppercase[: len(choices)]:
            return string.ascii_uppercase.index(text.upper())
    return None


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "the row is not a JSON object"
    if not isinstance(row.get("question"), str):
        return "'question' is missing or not text"
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            return "'choices' must be a list of at least two strings"
        if gold_index(row.get("answer"), choices) is None:
            return f"'answer' {row.get('answer')!r} is not an index, a letter or the text of one of the choices"
    elif not isinstance(row.get("answer"), str):
        return "'answer' is missing or not text (add 'choices' for a multiple-choice row)"
    return None


def read_custom_set(path: str | Path) -> CustomSet:
    """Read and check a jsonl set; any bad row fails with its file, line and how to fix it."""
    path = Path(path)
    if not path.is_file():
        raise XtError(f"Eval set '{path}' does not exist; pass a .jsonl file with one question per line.")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise XtError(f"{path}, line {number}: not valid JSON ({exc.msg}); write one JSON object per line.") from None
        problem = _row_problem(row)
        if problem:
            raise XtError(f"{path}, line {number}: {problem}; see 'xt eval --help' for the row format.")
        rows.append(row)
    if not rows:
        raise XtError(f"Eval set '{path}' has no rows; write one JSON object per line.")
    kinds = {"choices" in row for row in rows}
    if len(kinds) > 1:
        raise XtError(f"Eval set '{path}' mixes multiple-choice rows (with 'choices') and generation rows; "
                      f"split it into two files.")
    kind = MULTIPLE_CHOICE if kinds == {True} else GENERATION
    normalized = [{"question": r["question"], "choices": r.get("choices", []),
                   "answer": gold_index(r["answer"], r["choices"]) if kind == MULTIPLE_CHOICE else r["answer"]}
                  for r in rows]
    return CustomSet(name=re.sub(r"[^\w.-]+", "_", path.stem), kind=kind, rows=normalized)


def task_config(custom: CustomSet, data_file: Path, max_new_tokens: int) -> dict[str, Any]:
    """An lm-eval task config for ``custom`` whose normalized rows were written to ``data_file``."""
    config: dict[str, Any] = {
        "task": custom.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",  # the chat template already separates the question from the reply
        "metadata": {"version": 1},
    }
    if custom.kind == MULTIPLE_CHOICE:
        config.update(output_type="multiple_choice", doc_to_choice="{{choices}}",
                      metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    else:
        config.update(output_type="generate_until",
                      generation_kwargs={"until": [], "max_gen_toks": max_new_tokens, "do_sample": False},
                      metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                                    "ignore_case": True, "ignore_punctuation": False}])
    return config


def write_rows(custom: CustomSet, folder: Path) -> Path:
    path = folder / f"{custom.name}.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in custom.rows), encoding="utf-8")
    return path
