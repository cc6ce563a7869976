"""Fast batch version of :func:`xt.template.encode_conversation`.

The result is identical to encoding one conversation at a time: every text piece is tokenized on
its own exactly as :func:`xt.template.encode_part` does, but constant pieces (template framing
without ``{content}`` / ``{system}``) are tokenized once per tokenizer, and all the distinct message texts
of a batch go to the tokenizer's Rust backend in one ``encode_batch`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xt.errors import XtError
from xt.specs import SpecialToken, TemplateSpec
from xt.template import IGNORE_INDEX

# A compiled piece: ("ids", [ids]) for constants, or ("text", template text, "{field}", text is only the field).
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
                out.append(("text", piece, "{" + field + "}", piece == "{" + field + "}"))
            elif piece:
                out.append(("ids", list(self.tokenizer.encode(piece, add_special_tokens=False))))
        return out

    def _plan(self, conversations: Sequence[dict[str, Any]]) -> tuple[list[list[tuple[Any, bool]]], list[str]]:
        """Per conversation, its pieces in order as (constant ids or index of a distinct text, carries loss)."""
        texts: list[str] = []
        text_index: dict[str, int] = {}  # repeated texts (system prompts, duplicated rows) are tokenized once
        plans: list[list[tuple[Any, bool]]] = []

        def add(plan: list[tuple[Any, bool]], compiled: list[Piece], train: bool, value: str = "") -> None:
            for piece in compiled:
                if piece[0] == "ids":
                    plan.append((piece[1], train))
                    continue
                text = value if piece[3] else piece[1].replace(piece[2], value)
                if text:
                    index = text_index.get(text)
                    if index is None:
                        index = text_index[text] = len(texts)
                        texts.append(text)
                    plan.append((index, train))

        system_part, user, assistant = self.system, self.user, self.assistant
        # Parts without a field are the same for every conversation: their plan entries are fixed.
        prefix = [(p[1], False) for p in self.prefix if p[0] == "ids"] if _constant(self.prefix) else None
        end = [(p[1], True) for p in self.assistant_end] if _constant(self.assistant_end) else None
        sep = [(p[1], False) for p in self.turn_sep] if _constant(self.turn_sep) else None
        for conv in conversations:
            plan: list[tuple[Any, bool]] = []
            messages = conv["messages"]
            system = self.template.default_system
            if messages and messages[0].get("role") == "system":
                system, messages = messages[0]["content"], messages[1:]
            if prefix is None:
                add(plan, self.prefix, False)
            else:
                plan.extend(prefix)
            if system:
                add(plan, system_part, False, system)
            last = len(messages) - 1
            while messages[last]["role"] != "assistant":
                last -= 1
            for i in range(last + 1):
                message = messages[i]
                if message["role"] == "user":
                    add(plan, user, False, message["content"])
                else:
                    add(plan, assistant, True, message["content"])
                    if end is None:
                        add(plan, self.assistant_end, True)
                    else:
                        plan.extend(end)
                    if i != last:
                        if sep is None:
                            add(plan, self.turn_sep, False)
                        else:
                            plan.extend(sep)
            plans.append(plan)
        return plans, texts

    def encode(self, conversations: Sequence[dict[str, Any]]) -> list[dict[str, list[int]]]:
        """Validated conversations -> ``[{"input_ids", "labels"}]`` (same as ``TemplateSpec.encode``)."""
        plans, texts = self._plan(conversations)
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

    def encode_arrays(self, conversations: Sequence[dict[str, Any]]) -> tuple[Any, Any, Any]:
        """Like :meth:`encode`, as flat int32 ``input_ids`` and ``labels`` plus int64 sample lengths.

        Each distinct piece becomes one numpy array; samples are concatenations of those arrays,
        so no per-token Python work happens.
        """
        import numpy as np

        plans, texts = self._plan(conversations)
        arrays = [np.asarray(ids, dtype=np.int32) for ids in batch_tokenize(self.tokenizer, texts)]
        constants: dict[int, Any] = {}
        ignore = np.full(1024, IGNORE_INDEX, dtype=np.int32)
        id_parts: list[Any] = []
        label_parts: list[Any] = []
        lengths = np.zeros(len(plans), dtype=np.int64)
        for k, plan in enumerate(plans):
            total = 0
            for item, train in plan:
                if isinstance(item, int):
                    array = arrays[item]
                else:
                    array = constants.get(id(item))
                    if array is None:
                        array = constants[id(item)] = np.asarray(item, dtype=np.int32)
                n = len(array)
                if n > len(ignore):
                    ignore = np.full(2 * n, IGNORE_INDEX, dtype=np.int32)
                id_parts.append(array)
                label_parts.append(array if train else ignore[:n])
                total += n
            lengths[k] = total
        if not id_parts:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), lengths
        return np.concatenate(id_parts), np.concatenate(label_parts), lengths


def _constant(compiled: list[Piece]) -> bool:
    return all(piece[0] == "ids" for piece in compiled)


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
