"""Preference row formats -> the pair row the preference objectives take.

A pair row is ``{"messages": [system?, user, (assistant, user)*], "chosen": str, "rejected": str}``:
the prompt as messages ending with a user turn, and the two replies as plain strings. Three formats
map to it (pure Python, no torch); every row that does not fit raises :class:`RowError` with its
own reason:

- flat rows: ``prompt`` (or Alpaca's ``instruction`` + optional ``input``), ``chosen``, ``rejected``
  strings and an optional ``system``;
- message lists with a shared prompt (UltraFeedback-binarized): ``chosen`` and ``rejected`` are
  whole conversations that repeat the prompt turns and end with the assistant's reply; their prompt
  turns must be the same (and equal ``prompt`` when the row has one as a string);
- HH-RLHF: ``chosen`` and ``rejected`` are transcripts of ``"\\n\\nHuman: ..."`` /
  ``"\\n\\nAssistant: ..."`` turns; the text up to the last ``"\\n\\nAssistant:"`` is the prompt and
  must be the same in both.
"""

from __future__ import annotations

from typing import Any

from xt.api import RowError, conversation_problems

ROLES = ("system", "user", "assistant")
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def _string(row: dict[str, Any], key: str, *, required: bool, what: str) -> str:
    """A string field of the row ('' when optional and absent or null); empty required strings are refused."""
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing '{key}' ({what})")
        return ""
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"empty '{key}' ({what})")
    return value


def pair_sequences(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The two conversations a pair row becomes: prompt + chosen reply, then prompt + rejected reply.

    Earlier assistant turns of a multi-turn prompt are context only (``weight`` 0): the log-probs the
    objectives compare cover the final reply alone.
    """
    extra = {"images": row["images"]} if "images" in row else {}
    prompt = [dict(m, weight=0) if m.get("role") == "assistant" else m for m in row["messages"]]
    return [{"messages": [*prompt, {"role": "assistant", "content": row[key]}], **extra}
            for key in ("chosen", "rejected")]


def pair_problems(row: Any) -> list[str]:
    """What is wrong with a mapped pair row (empty when it is a valid pair)."""
    if not isinstance(row, dict):
        return [f"a pair row must be a dict, got {type(row).__name__}"]
    if "chosen" not in row and "rejected" not in row:
        return ["the row is not a preference pair (no 'chosen' and 'rejected' replies): train a preference "
                "dataset (preference-jsonl, ultrafeedback, hh-rlhf, ...) or this one with --objective sft"]
    out = [f"'{key}' must be a non-empty string (the {what} reply)"
           for key, what in (("chosen", "preferred"), ("rejected", "dispreferred"))
           if not isinstance(row.get(key), str) or not row[key].strip()]
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "user":
        out.append("'messages' must be the prompt turns, ending with a user turn")
    if out:
        return out
    if row["chosen"] == row["rejected"]:
        return ["'chosen' and 'rejected' are the same reply: the pair carries no preference"]
    return conversation_problems(pair_sequences(row)[0])


def pair_row(messages: list[dict[str, str]], chosen: str, rejected: str) -> dict[str, Any]:
    """The pair row; refuses identical replies (they carry no preference)."""
    if chosen == rejected:
        raise RowError("'chosen' and 'rejected' are the same reply: the pair carries no preference")
    return {"messages": messages, "chosen": chosen, "rejected": rejected}


# ------------------------------------------------------------------------------------------------ flat rows


def map_flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """``{"prompt" | "instruction" (+ "input"), "chosen", "rejected", "system"?}`` -> a pair row."""
    reply = "a preference row needs 'prompt' (or 'instruction'), 'chosen' and 'rejected'"
    if row.get("prompt") is not None:
        if row.get("instruction") is not None:
            raise RowError("the row has both 'prompt' and 'instruction': keep one")
        prompt = _string(row, "prompt", required=True, what="the question the replies answer")
    else:
        instruction = _string(row, "instruction", required=False, what=reply)
        input_text = _string(row, "input", required=False, what=reply)
        if not instruction.strip() and not input_text.strip():
            raise RowError(f"no prompt: {reply}")
        prompt = "\n\n".join(part for part in (instruction, input_text) if part.strip())
    chosen = _string(row, "chosen", required=True, what="the preferred reply")
    rejected = _string(row, "rejected", required=True, what="the dispreferred reply")
    messages = []
    system = _string(row, "system", required=False, what=reply)
    if system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return pair_row(messages, chosen, rejected)


# ------------------------------------------------------------------------------- message lists (UltraFeedback)


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    """A list of ``{"role", "content"}`` messages with known roles and string contents."""
    if not isinstance(value, list) or not value:
        raise RowError(f"'{key}' must be a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f"{key}[{i}] must be a message with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise RowError(f"{key}[{i}] has role {message['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise RowError(f"{key}[{i}] content must be a string, got {type(message['content']).__name__}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _split_reply(messages: list[dict[str, str]], key: str) -> tuple[list[dict[str, str]], str]:
    """(prompt turns ending with a user turn, the final assistant reply) of one side of the pair."""
    if messages[-1]["role"] != "assistant":
        raise RowError(f"'{key}' must end with the assistant's reply, not a {messages[-1]['role']} turn")
    prompt = messages[:-1]
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError(f"'{key}' must have a user turn right before its final reply")
    if not messages[-1]["content"].strip():
        raise RowError(f"the final reply of '{key}' is empty")
    return prompt, messages[-1]["content"]


def map_message_pair_row(row: dict[str, Any]) -> dict[str, Any]:
    """UltraFeedback-binarized: ``prompt``?, ``chosen`` / ``rejected`` conversations -> a pair row."""
    chosen_prompt, chosen = _split_reply(_messages(row.get("chosen"), "chosen"), "chosen")
    rejected_prompt, rejected = _split_reply(_messages(row.get("rejected"), "rejected"), "rejected")
    if chosen_prompt != rejected_prompt:
        raise RowError("'chosen' and 'rejected' differ before their final replies: a pair needs one shared prompt")
    prompt = row.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise RowError(f"'prompt' must be a string, got {type(prompt).__name__}")
        if prompt.strip() and prompt.strip() != chosen_prompt[-1]["content"].strip():
            raise RowError("'prompt' is not the last user turn of 'chosen' and 'rejected'")
    return pair_row(chosen_prompt, chosen, rejected)


# ---------------------------------------------------------------------------------------------- HH-RLHF


def _hh_turns(text: str, key: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b ..."`` -> alternating user/assistant messages."""
    if not text.startswith(HUMAN):
        raise RowError(f"'{key}' must start with '\\n\\nHuman:' (an HH-RLHF transcript)")
    messages = []
    for chunk in text.split(HUMAN)[1:]:
        parts = chunk.split(ASSISTANT)
        if len(parts) != 2:
            raise RowError(f"each Human turn of '{key}' must be followed by exactly one Assistant turn")
        messages.append({"role": "user", "content": parts[0].strip()})
        messages.append({"role": "assistant", "content": parts[1].strip()})
    return messages


def map_hh_row(row: dict[str, Any]) -> dict[str, Any]:
    """HH-RLHF: ``chosen`` / ``rejected`` transcripts sharing everything up to the last Assistant turn."""
    chosen_text = _string(row, "chosen", required=True, what="the preferred transcript")
    rejected_text = _string(row, "rejected", required=True, what="the dispreferred transcript")
    cut = chosen_text.rfind(ASSISTANT)
    if cut < 0 or rejected_text.rfind(ASSISTANT) < 0:
        raise RowError("'chosen' and 'rejected' must each contain a '\\n\\nAssistant:' turn")
    if chosen_text[:cut] != rejected_text[:rejected_text.rfind(ASSISTANT)]:
        raise RowError("'chosen' and 'rejected' differ before their last '\\n\\nAssistant:' turn: "
                       "a pair needs one shared prompt")
    prompt, chosen = _split_reply(_hh_turns(chosen_text, "chosen"), "chosen")
    _, rejected = _split_reply(_hh_turns(rejected_text, "rejected"), "rejected")
    return pair_row(prompt, chosen, rejected)


def map_preference_row(row: dict[str, Any]) -> dict[str, Any]:
    """Any of the formats above, told apart by the type of ``chosen``: a list is a conversation,
    a string starting with ``"\\n\\nHuman:"`` an HH-RLHF transcript, any other string a flat reply."""
    chosen = row.get("chosen")
    if isinstance(chosen, list):
        return map_message_pair_row(row)
    if isinstance(chosen, str) and chosen.startswith(HUMAN) and row.get("prompt") is None \
            and row.get("instruction") is None:
        return map_hh_row(row)
    return map_flat_row(row)
