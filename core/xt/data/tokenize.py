"""Fast batch version of :func:`xt.template.encode_conversation`.

The result is identical to encoding one conversation at a time: every text piece is tokenized on
its own exactly as :func:`xt.template.encode_part` does, but constant pieces (template framing
without ``{content}`` / ``{system}``) are tokenized once per tokenizer, and all the distinct message texts
of a batch go to the tokenizer's Rust backend in one ``encode_batch`` call.
"""

from __future__ import annotations

from typing import Any, Sequence

from xt.errors import XtError
from xt.specs import SpecialToken, TemplateSpec
from xt.template import IGNORE_INDEX

# A compiled piece: ("ids", [ids]) for constants, or ("text", template_text, field_name).
Piece = tuple


def _pieces(part: Any) -> list[Any]:
    return [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)


class BatchEncoder:
    """Encodes many conversations through one template and one tokenizer."""

    def __init__(self, template: TemplateSpec, tokenizer: Any) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.prefix = self._compile(template.prefix, None)
        self.system = self._compile(template.system, "system")
        self.user = self._compile(template.user, "content")
        self.assistant = self._compile(template.assistant, "content")
        self.assistant_end = self._compile(template.assistant_end, None)
        self.turn_sep = self._compile(template.turn_sep, None)

    def _compile(self, part: Any, field: str | None) -> list[Piece]:
        """Constant pieces become ids now; pieces holding ``{field}`` stay text to fill per message."""
        out: list[Piece] = []
        for piece in _pieces(part):
            if isinstance(piece, SpecialToken):
                tid = self.tokenizer.bos_token_id if piece == "bos" else self.tokenizer.eos_token_id
                if tid is None:
                    if piece == "eos":
                        raise XtError(
                            "The tokenizer has no EOS token but the template ends replies with EOS; "
                            "set tokenizer.eos_token or choose a template with an explicit end token."
                        )
                    continue
                out.append(("ids", [int(tid)]))
            elif isinstance(piece, int):
                out.append(("ids", [piece]))
            elif field is not None and "{" + field + "}" in piece:
                out.append(("text", piece, field))
            elif piece:
                out.append(("ids", list(self.tokenizer.encode(piece, add_special_tokens=False))))
        return out

    def encode(self, conversations: Sequence[dict[str, Any]]) -> list[dict[str, list[int]]]:
        """Validated conversations -> ``[{"input_ids", "labels"}]`` (same as ``TemplateSpec.encode``)."""
        texts: list[str] = []
        text_index: dict[str, int] = {}  # repeated texts (system prompts, duplicated rows) are tokenized once
        plans: list[list[tuple[Any, bool]]] = []  # (ids list or text index, trains)
        for conv in conversations:
            plan: list[tuple[Any, bool]] = []

            def add(compiled: list[Piece], train: bool, value: str | None = None) -> None:
                for piece in compiled:
                    if piece[0] == "ids":
                        plan.append((piece[1], train))
                    else:
                        text = piece[1].replace("{" + piece[2] + "}", value or "")
                        if text:
                            index = text_index.get(text)
                            if index is None:
                                index = text_index[text] = len(texts)
                                texts.append(text)
                            plan.append((index, train))

            messages = conv["messages"]
            system = self.template.default_system
            if messages and messages[0].get("role") == "system":
                system, messages = messages[0]["content"], messages[1:]
            add(self.prefix, False)
            if system:
                add(self.system, False, system)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            for i, message in enumerate(messages[: last + 1]):
                if message["role"] == "user":
                    add(self.user, False, message["content"])
                else:
                    add(self.assistant, True, message["content"])
                    add(self.assistant_end, True)
                    if i != last:
                        add(self.turn_sep, False)
            plans.append(plan)
        encoded = batch_tokenize(self.tokenizer, texts)
        out = []
        for plan in plans:
            input_ids: list[int] = []
            labels: list[int] = []
            for item, train in plan:
                ids = encoded[item] if isinstance(item, int) else item
                input_ids.extend(ids)
                labels.extend(ids if train else [IGNORE_INDEX] * len(ids))
            out.append({"input_ids": input_ids, "labels": labels})
        return out


def batch_tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, as ``tokenizer.encode(t, add_special_tokens=False)``."""
    if not texts:
        return []
    backend = getattr(tokenizer, "_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch") and backend.truncation is None
            and backend.padding is None
            and bool(getattr(backend, "encode_special_tokens", False)) == bool(getattr(tokenizer, "split_special_tokens", False))):
        fast = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [enc.ids for enc in fast(texts, add_special_tokens=False)]
    try:
        return list(tokenizer(texts, add_special_tokens=False, truncation=False, padding=False)["input_ids"])
    except Exception:
        return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
