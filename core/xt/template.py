"""Render conversations through a :class:`~xt.specs.TemplateSpec` into token ids and labels.

Each part is tokenized on its own (``add_special_tokens=False``), so the boundary between prompt
and reply is exact and labels can be assigned per part. The same functions build training samples,
chat prompts and eval prompts, so training and inference frame text identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xt.errors import XtError
from xt.specs import SpecialToken, TemplateSpec, conversation_problems

IGNORE_INDEX = -100


def encode_part(part: Any, tokenizer: Any, **fields: str) -> list[int]:
    """Token ids of one template part with ``{content}`` / ``{system}`` filled in."""
    pieces = [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)
    ids: list[int] = []
    for piece in pieces:
        if isinstance(piece, SpecialToken):
            tid = tokenizer.bos_token_id if piece == "bos" else tokenizer.eos_token_id
            if tid is None:
                if piece == "eos":
                    raise XtError(
                        "The tokenizer has no EOS token but the template ends replies with EOS; "
                        "set tokenizer.eos_token or choose a template with an explicit end token."
                    )
                continue  # no BOS in this tokenizer: nothing to add
            ids.append(int(tid))
        elif isinstance(piece, int):
            ids.append(piece)
        else:
            text = piece
            for key, value in fields.items():
                text = text.replace("{" + key + "}", value)
            if text:
                ids.extend(tokenizer.encode(text, add_special_tokens=False))
    return ids


def _system_and_turns(messages: Sequence[dict[str, Any]], template: TemplateSpec) -> tuple[str | None, list]:
    system = template.default_system
    rest = list(messages)
    if rest and rest[0].get("role") == "system":
        system = rest[0]["content"]
        rest = rest[1:]
    return system, rest


def encode_conversation(template: TemplateSpec, conversation: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    """A conversation -> ``{"input_ids", "labels"}``.

    Labels equal the input ids on every assistant reply and its end token(s), in every turn, and
    are ``-100`` everywhere else (prefix, system prompt, user turns, separators).
    """
    problems = conversation_problems(conversation)
    if problems:
        raise XtError("Invalid conversation: " + "; ".join(problems) + ".")
    system, messages = _system_and_turns(conversation["messages"], template)
    input_ids: list[int] = []
    labels: list[int] = []

    def add(ids: list[int], train: bool) -> None:
        input_ids.extend(ids)
        labels.extend(ids if train else [IGNORE_INDEX] * len(ids))

    add(encode_part(template.prefix, tokenizer), False)
    if system:
        add(encode_part(template.system, tokenizer, system=system), False)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for i, message in enumerate(messages[: last_assistant + 1]):
        if message["role"] == "user":
            add(encode_part(template.user, tokenizer, content=message["content"]), False)
        else:
            head, reply = split_assistant(template)
            add(encode_part(head, tokenizer), False)  # fixed framing before the reply: prompt side
            add(encode_part(reply, tokenizer, content=message["content"]), True)
            add(encode_part(template.assistant_end, tokenizer), True)
            if i != last_assistant:
                add(encode_part(template.turn_sep, tokenizer), False)
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt(template: TemplateSpec, messages: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Messages whose last one is from the user -> ids of the prompt the reply continues.

    Earlier assistant turns are rendered exactly as in training (reply, end token, separator).
    """
    system, turns = _system_and_turns(messages, template)
    if not turns or turns[-1].get("role") != "user":
        raise XtError("A prompt must end with a user message.")
    ids = encode_part(template.prefix, tokenizer)
    if system:
        ids += encode_part(template.system, tokenizer, system=system)
    for message in turns:
        if message["role"] == "user":
            ids += encode_part(template.user, tokenizer, content=message["content"])
        else:
            ids += encode_part(template.assistant, tokenizer, content=message["content"])
            ids += encode_part(template.assistant_end, tokenizer)
            ids += encode_part(template.turn_sep, tokenizer)
    # The assistant part may open with fixed framing before {content} (e.g. token 196 or "Assistant: ").
    ids += encode_part(split_assistant(template)[0], tokenizer)
    return ids


def split_assistant(template: TemplateSpec) -> tuple[list[Any], list[Any]]:
    """The assistant part split at ``{content}``: fixed framing before it (no loss) and the rest."""
    part = template.assistant
    pieces = [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)
    for i, piece in enumerate(pieces):
        if isinstance(piece, str) and not isinstance(piece, SpecialToken) and "{content}" in piece:
            before, after = piece.split("{content}", 1)
            head = pieces[:i] + ([before] if before else [])
            return head, ["{content}" + after] + pieces[i + 1:]
    return [], pieces


def stop_token_ids(template: TemplateSpec, tokenizer: Any) -> list[int]:
    """Token ids that end a reply: ``assistant_end`` when it is one token, plus EOS.

    A multi-token end (text the tokenizer splits) is caught by ``stop_words`` instead.
    """
    ids: list[int] = []
    end = encode_part(template.assistant_end, tokenizer)
    if len(end) == 1:
        ids.append(end[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids
