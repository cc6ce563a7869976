"""The Alpaca row format -> the canonical conversation.

An Alpaca row holds ``instruction``, an optional ``input`` (context for the instruction) and
``output`` (the reply). Some variants add ``system`` (a system prompt) and ``history`` (earlier
turns as ``[[user, assistant], ...]``). Pure Python: no torch.

How the two Stanford prompts come out: the Alpaca template (:mod:`xt_alpaca.templates`) renders
the *no-input* prompt, its preamble being the template's default system prompt. For a row with an
input, the map writes the user turn as ``instruction`` + ``"\\n\\n### Input:\\n"`` + ``input`` and
sets the *with-input* preamble as the conversation's system message (unless the row brings its own
``system``), so ``--template alpaca`` reproduces both Stanford prompts exactly, and any other
template still receives plain, readable text.
"""

from __future__ import annotations

from typing import Any

from xt.api import RowError

#: The Stanford Alpaca preambles (tatsu-lab/stanford_alpaca README, "Data Release").
PREAMBLE_NO_INPUT = ("Below is an instruction that describes a task. "
                     "Write a response that appropriately completes the request.")
PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                       "further context. Write a response that appropriately completes the request.")
INPUT_HEADER = "\n\n### Input:\n"


def _text_field(row: dict[str, Any], key: str, required: bool) -> str:
    """A string field of the row ('' when optional and absent or null)."""
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing '{key}' (an Alpaca row needs 'instruction' and 'output')")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _history_messages(history: Any) -> list[dict[str, str]]:
    """``[[user, assistant], ...]`` -> alternating messages."""
    if not isinstance(history, list):
        raise RowError(f"'history' must be a list of [instruction, response] pairs, got {type(history).__name__}")
    messages: list[dict[str, str]] = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RowError(f"history turn {i} must be a pair of strings [instruction, response]")
        if not turn[1].strip():
            raise RowError(f"history turn {i} has an empty response")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return messages


def user_content(instruction: str, input_text: str) -> str:
    """The user turn: the instruction, plus an ``### Input:`` section when the row has an input."""
    if not input_text.strip():
        return instruction
    if not instruction.strip():
        return input_text
    return instruction + INPUT_HEADER + input_text


def map_alpaca_row(row: dict[str, Any]) -> dict[str, Any]:
    """One Alpaca row -> ``{"messages": [...]}``; raises :class:`RowError` saying what is wrong."""
    instruction = _text_field(row, "instruction", required=True)
    input_text = _text_field(row, "input", required=False)
    output = _text_field(row, "output", required=True)
    if not instruction.strip() and not input_text.strip():
        raise RowError("empty 'instruction' (and no 'input')")
    if not output.strip():
        raise RowError("empty 'output': there is no reply to learn from")
    system = _text_field(row, "system", required=False)
    if not system.strip() and input_text.strip() and instruction.strip():
        system = PREAMBLE_WITH_INPUT
    messages: list[dict[str, str]] = []
    if system.strip():
        messages.append({"role": "system", "content": system})
    if row.get("history"):
        messages += _history_messages(row["history"])
    messages.append({"role": "user", "content": user_content(instruction, input_text)})
    messages.append({"role": "assistant", "content": output})
    return {"messages": messages}
