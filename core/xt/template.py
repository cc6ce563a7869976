"""The template engine: a chat template compiled for one tokenizer.

A :class:`ChatTemplate` holds the template's sections as pieces (constant token ids, constant text,
or a slot filled with a message's text), each with a loss flag. The one object encodes a
conversation, a batch of conversations (the fast path the data pipeline uses), a chat prompt, gives
the stop ids and renders the Jinja chat template saved with results, so training, preview, eval,
chat, export and the conformance kit frame text identically.

Tokenization rule: in a rendered conversation, adjacent text with the same loss flag (framing and
message text alike) forms one run, and each run is tokenized as the tokenizer tokenizes it inside
the rendered string, i.e. after a split point (no SentencePiece dummy prefix except at the very
start). Token ids (BOS, EOS, literal ids) are split points themselves. The prompt/reply boundary is
therefore always a token boundary, the chat prompt is exactly the prefix of the training sample,
and ``tokenizer.apply_chat_template`` on a saved result gives the training ids whenever the
tokenizer does not merge characters across a run boundary (the start and end of each reply).

Fixed framing before ``{content}`` in the assistant part is prompt (no loss), except spaces at the
very end of the prompt framing (that part, or the user part when it has none): tokenizers attach a
space to the word after it (``"ASSISTANT: Paris"`` -> ``":"``, ``"▁Paris"``), so those spaces start
the reply and carry loss.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

from xt.errors import XtError
from xt.specs import SpecialToken, TemplateSpec, conversation_problems

IGNORE_INDEX = -100
#: Conversations planned per tokenizer call in :meth:`ChatTemplate.encode_arrays`.
ENCODE_BLOCK = 1024

CONTENT = "content"
SYSTEM = "system"


@dataclass(frozen=True)
class Piece:
    """Constant token ids, constant text, or a ``slot`` (``"content"`` / ``"system"``) filled per message."""

    ids: tuple[int, ...] = ()
    text: str = ""
    slot: str | None = None

    @property
    def is_ids(self) -> bool:
        return bool(self.ids)


class ChatTemplate:
    """A template compiled for one tokenizer; build it with :func:`compile_template` or from pieces.

    Layout: ``prefix``, ``system`` (when there is a system text), then per turn ``user`` (prompt),
    and for a reply ``head`` (prompt), ``reply`` and ``end`` (both carry loss), ``turn_sep`` between
    replies and ``final_sep`` after the last one (prompt). A chat prompt ends after ``head``.
    """

    def __init__(self, tokenizer: Any, *, prefix: Sequence[Piece] = (), system: Sequence[Piece] = (),
                 user: Sequence[Piece] = (), head: Sequence[Piece] = (), reply: Sequence[Piece] = (),
                 end: Sequence[Piece] = (), turn_sep: Sequence[Piece] = (), final_sep: Sequence[Piece] = (),
                 default_system: str | None = None,
                 stop_words: Sequence[str] = (), name: str = "") -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.prefix, self.system, self.user = tuple(prefix), tuple(system), tuple(user)
        self.head, self.reply, self.end, self.turn_sep = tuple(head), tuple(reply), tuple(end), tuple(turn_sep)
        self.final_sep = tuple(final_sep)
        self.default_system = default_system
        self.stop_words = tuple(stop_words)
        self._anchor = _continuation_anchor(tokenizer)
        self._entries = {name: _entries(getattr(self, name))
                         for name in ("prefix", "system", "user", "head", "reply", "end", "turn_sep", "final_sep")}

    # -- layout -------------------------------------------------------------------------------

    def _items(self, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> list[tuple[Any, bool]]:
        """The rendered conversation as ``(ids tuple or text run, carries loss)`` items, in order."""
        system, turns = self.default_system, messages
        if turns and turns[0].get("role") == SYSTEM:
            system, turns = turns[0]["content"], turns[1:]
        last = len(turns)
        if not generation_prompt:
            while turns[last - 1]["role"] != "assistant":
                last -= 1
        items: list[tuple[Any, bool]] = []
        _emit(items, self._entries["prefix"], False, "")
        if system:
            _emit(items, self._entries["system"], False, system)
        user, head, reply = self._entries["user"], self._entries["head"], self._entries["reply"]
        end, sep = self._entries["end"], self._entries["turn_sep"]
        for i in range(last):
            message = turns[i]
            if message["role"] == "user":
                _emit(items, user, False, message["content"])
                continue
            trains = message.get("weight", 1) != 0  # weight 0: a reply kept as context, without loss
            _emit(items, head, False, "")
            _emit(items, reply, trains, message["content"])
            _emit(items, end, trains, "")
            if i != last - 1:
                _emit(items, sep, False, "")
        if generation_prompt:
            _emit(items, head, False, "")
        else:
            _emit(items, self._entries["final_sep"], False, "")
        return items

    def _plan(self, layouts: Iterable[list[tuple[Any, bool]]], plan: Plan | None = None) -> Plan:
        """Layouts as segments numbering their sources (added to ``plan`` when given); a repeated run
        or ids tuple is one source.

        Layouts are read one at a time, so no container per item outlives its conversation.
        """
        plan = plan if plan is not None else Plan([], [], [], [])
        numbers, sources = plan.numbers, plan.sources  # repeated runs (system prompts, duplicate rows) tokenized once
        segments, losses, counts = plan.segments, plan.losses, plan.counts
        for items in layouts:
            counts.append(len(items))
            for k, (item, loss) in enumerate(items):
                key = (item, True) if k == 0 and isinstance(item, str) else item  # a run at offset 0 starts a string
                number = numbers.get(key)
                if number is None:
                    number = numbers[key] = len(sources)
                    sources.append(key)
                segments.append(number)
                losses.append(loss)
        return plan

    def _resolve(self, sources: list[Any]) -> tuple[list[int], list[int], Iterator[Sequence[int]]]:
        """Per source, in order: how many ids the tokenizer gave, how many lead them (the anchor), the ids.

        A text run after a split point is tokenized behind the continuation anchor; a run at the start
        of a string as it is; an ids tuple is its own ids. The ids come lazily, one sequence per source.
        """
        marker, lead = self._anchor or ("", 0)
        texts = [(marker + key) if isinstance(key, str) else key[0] for key in sources if _is_text(key)]
        text_sizes, token_lists = _token_lists(self.tokenizer, texts)
        sizes_left = iter(text_sizes)
        sizes = [next(sizes_left) if _is_text(key) else len(key) for key in sources]
        skips = [lead if isinstance(key, str) else 0 for key in sources]
        return sizes, skips, _in_source_order(sources, token_lists)

    def _source_lists(self, sources: list[Any]) -> list[list[int]]:
        """The ids of each source as a list."""
        _, skips, sequences = self._resolve(sources)
        return [list(ids)[skip:] for ids, skip in zip(sequences, skips)]

    def _sample_lists(self, plan: Plan) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` of each planned sample, as lists."""
        ids_of = self._source_lists(plan.sources)
        out = []
        at = 0
        for count in plan.counts:
            input_ids: list[int] = []
            labels: list[int] = []
            for number, loss in zip(plan.segments[at:at + count], plan.losses[at:at + count]):
                ids = ids_of[number]
                input_ids.extend(ids)
                labels.extend(ids if loss else [IGNORE_INDEX] * len(ids))
            out.append((input_ids, labels))
            at += count
        return out

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, conversation: dict[str, Any]) -> dict[str, list[int]]:
        """A conversation -> ``{"input_ids", "labels"}`` (labels -100 outside replies and their end)."""
        problems = conversation_problems(conversation)
        if problems:
            raise XtError("Invalid conversation: " + "; ".join(problems) + ".")
        return self.encode_batch([conversation])[0]

    def encode_batch(self, conversations: Sequence[dict[str, Any]]) -> list[dict[str, list[int]]]:
        """Validated conversations -> ``[{"input_ids", "labels"}]``, tokenizing distinct runs in one call."""
        plan = self._plan(self._items(c["messages"], False) for c in conversations)
        return [{"input_ids": ids, "labels": labels} for ids, labels in self._sample_lists(plan)]

    def encode_arrays(self, conversations: Iterable[dict[str, Any]]) -> tuple[Any, Any, Any]:
        """Like :meth:`encode_batch`, as flat int32 ``input_ids`` and ``labels`` plus int64 sample lengths.

        Conversations are read and planned in blocks; each block's new runs go to the tokenizer on a
        second thread (its batch call releases the GIL) while this one reads and plans the next block
        (an iterator of conversations may still be mapping rows), then reads the finished blocks' ids
        into flat arrays (no slice or array per run). The samples are one gather from them.
        """
        import numpy as np

        from xt.arrays import gather_index

        plan = Plan([], [], [], [])
        conversations = iter(conversations)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xt-tokenize") as pool:
            pending = []
            while block := list(islice(conversations, ENCODE_BLOCK)):
                first = len(plan.sources)
                self._plan((self._items(c["messages"], False) for c in block), plan)
                pending.append(pool.submit(self._resolve, plan.sources[first:]))
            blocks = [_flat_ids(*future.result()) for future in pending]
        store, size, skip = (np.concatenate([b[k] for b in blocks] or [np.zeros(0, dtype)])
                             for k, dtype in enumerate((np.int32, np.int64, np.int64)))
        source_start, source_length = np.cumsum(size) - size + skip, size - skip
        segments = np.asarray(plan.segments, dtype=np.int64)
        segment_lengths = source_length[segments]
        ids = store[gather_index(source_start[segments], segment_lengths)]
        loss = np.repeat(np.asarray(plan.losses, dtype=bool), segment_lengths)
        labels = np.where(loss, ids, np.int32(IGNORE_INDEX)).astype(np.int32, copy=False)
        counts = np.asarray(plan.counts, dtype=np.int64)
        ends = np.concatenate(([0], np.cumsum(segment_lengths)))[np.cumsum(counts)]
        return ids, labels, np.diff(ends, prepend=0)

    def encode_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Messages whose last one is from the user -> ids of the prompt the reply continues.

        Exactly the training sample's ids up to where the last reply starts.
        """
        turns = [m for m in messages if m.get("role") != SYSTEM]
        if not turns or turns[-1].get("role") != "user":
            raise XtError("A prompt must end with a user message.")
        return self._sample_lists(self._plan([self._items(list(messages), True)]))[0][0]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a reply: ``end`` when it is one token, plus EOS.

        A multi-token end (text the tokenizer splits) is caught by ``stop_words`` instead.
        """
        ids: list[int] = []
        if len(self.end) == 1 and self.end[0].slot is None:
            piece = self.end[0]
            end_ids = list(piece.ids) if piece.is_ids else self._source_lists([piece.text])[0]
            if len(end_ids) == 1:
                ids.append(int(end_ids[0]))
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(int(eos))
        return ids

    # -- Jinja --------------------------------------------------------------------------------

    def jinja(self) -> str:
        """A Hugging Face chat template rendering conversations exactly as this template frames them.

        Replies and their end are wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask``
        marks the loss-bearing tokens. Token ids are written as their token strings, which must be
        tokens the tokenizer splits text on (special or added tokens).
        """
        default_system = json.dumps(self.default_system) if self.default_system else "none"
        content = "message['content']"
        return "".join([
            "{%- if messages and messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
            f"{{%- set turns = messages[1:] %}}{{%- else %}}{{%- set system = {default_system} %}}"
            "{%- set turns = messages %}{%- endif %}",
            self._jinja_expr(self.prefix, ""),
            "{%- if system %}", self._jinja_expr(self.system, "system"), "{%- endif %}",
            "{%- for message in turns %}",
            "{%- if message['role'] == 'user' %}", self._jinja_expr(self.user, content),
            "{%- else %}", self._jinja_expr(self.head, ""),
            "{%- generation %}", self._jinja_expr(self.reply + self.end, content), "{%- endgeneration %}",
            "{%- if not loop.last %}", self._jinja_expr(self.turn_sep, ""), "{%- endif %}",
            "{%- endif %}{%- endfor %}",
            "{%- if turns and turns[-1]['role'] != 'user' %}", self._jinja_expr(self.final_sep, ""), "{%- endif %}",
            "{%- if add_generation_prompt %}", self._jinja_expr(self.head, ""), "{%- endif %}",
        ])

    def text_of(self, pieces: Sequence[Piece], value: str = "") -> str:
        """Pieces as plain text with the slot filled by ``value`` and ids as their token strings."""
        return "".join(value if p.slot is not None else
                       "".join(self._token_string(i) for i in p.ids) if p.is_ids else p.text for p in pieces)

    def text_around(self, pieces: Sequence[Piece]) -> tuple[str, str]:
        """The text of ``pieces`` before and after their slot (all of it before when there is none)."""
        at = next((i for i, p in enumerate(pieces) if p.slot is not None), len(pieces))
        return self.text_of(pieces[:at]), self.text_of(pieces[at + 1:])

    def _jinja_expr(self, pieces: Sequence[Piece], value: str) -> str:
        """Pieces as one Jinja ``{{ a ~ b }}`` expression ('' when they render nothing)."""
        terms: list[str] = []
        for piece in pieces:
            if piece.is_ids:
                terms.extend(json.dumps(self._token_string(i)) for i in piece.ids)
            elif piece.slot is not None:
                terms.append(value)
            elif piece.text:
                terms.append(json.dumps(piece.text))
        return "{{ " + " ~ ".join(terms) + " }}" if terms else ""

    def _token_string(self, token_id: int) -> str:
        token = self.tokenizer.convert_ids_to_tokens(int(token_id))
        if token is None or self.tokenizer.encode(token, add_special_tokens=False) != [int(token_id)]:
            raise XtError(
                f"Template '{self.name}' uses token id {token_id}, which this tokenizer does not produce from "
                f"its text {token!r}, so no Jinja chat template can reproduce it; use a tokenizer where that id "
                f"is a special token (for example the model family's own tokenizer).")
        return token


@dataclass
class Plan:
    """Samples as segments: each is the number of its source and whether it carries loss.

    A source is a text run after a split point (``str``), a text run at the start of a string
    (``(str, True)``) or constant ids (a tuple of ints); ``counts`` holds each sample's segments.
    """

    sources: list[Any]
    segments: list[int]
    losses: list[bool]
    counts: list[int]
    numbers: dict[Any, int] = field(default_factory=dict)  # source -> its index in ``sources``


def _flat_ids(sizes: list[int], skips: list[int], sequences: Iterator[Sequence[int]]) -> tuple[Any, Any, Any]:
    """A block's resolved sources as arrays: all ids in one int32 array, the sizes and skips."""
    import numpy as np

    store = np.fromiter(chain.from_iterable(sequences), dtype=np.int32, count=sum(sizes))
    return store, np.asarray(sizes, dtype=np.int64), np.asarray(skips, dtype=np.int64)


def _is_text(source: Any) -> bool:
    return isinstance(source, str) or isinstance(source[0], str)


def _in_source_order(sources: list[Any], token_lists: Iterable[Sequence[int]]) -> Iterator[Sequence[int]]:
    """The ids of every source, taking the text runs' ids from ``token_lists`` in turn."""
    tokenized = iter(token_lists)
    for source in sources:
        yield next(tokenized) if _is_text(source) else source


def _entries(pieces: Sequence[Piece]) -> tuple[Any, ...]:
    """Pieces as what :func:`_emit` reads: an ids tuple, a constant text, or None for the slot."""
    return tuple(p.ids if p.is_ids else (None if p.slot is not None else p.text) for p in pieces
                 if p.is_ids or p.slot is not None or p.text)


def _emit(items: list[tuple[Any, bool]], entries: tuple[Any, ...], loss: bool, value: str) -> None:
    """Append a section; text joins the previous item when that is text with the same loss flag."""
    for entry in entries:
        if entry is None:
            entry = value
            if not entry:
                continue
        if isinstance(entry, str) and items:
            previous, previous_loss = items[-1]
            if previous_loss == loss and isinstance(previous, str):
                items[-1] = (previous + entry, loss)
                continue
        items.append((entry, loss))


def _continuation_anchor(tokenizer: Any) -> tuple[str, int] | None:
    """A special token to put before a run so it tokenizes as it does after a split point.

    SentencePiece tokenizers add a dummy-prefix space only at the very start of a string; a run in
    the middle of a rendered conversation gets none. None when the tokenizer has no usable special
    token (then every text tokenizes on its own).
    """
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id):
        token = added.get(token_id) if token_id is not None else None
        if token is None or getattr(token, "rstrip", False) or getattr(token, "lstrip", False):
            continue
        marker = str(token)
        marker_ids = tokenizer.encode(marker, add_special_tokens=False)
        if marker_ids == [token_id] and tokenizer.encode(marker + "a", add_special_tokens=False)[:1] == marker_ids:
            return marker, 1
    return None


def _pieces(part: Any) -> list[Any]:
    return [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)


def _compile_part(part: Any, tokenizer: Any, slot: str | None) -> list[Piece]:
    """A :class:`TemplateSpec` part -> pieces (``{slot}`` in text becomes a slot piece)."""
    out: list[Piece] = []
    for piece in _pieces(part):
        if isinstance(piece, SpecialToken):
            token_id = tokenizer.bos_token_id if piece == "bos" else tokenizer.eos_token_id
            if token_id is None:
                if piece == "eos":
                    raise XtError(
                        "The tokenizer has no EOS token but the template ends replies with EOS; "
                        "set tokenizer.eos_token or choose a template with an explicit end token.")
                continue  # no BOS in this tokenizer: nothing to add
            out.append(Piece(ids=(int(token_id),)))
        elif isinstance(piece, int):
            out.append(Piece(ids=(piece,)))
        elif slot is not None and "{" + slot + "}" in piece:
            before, after = piece.split("{" + slot + "}", 1)
            out += [Piece(text=before), Piece(slot=slot), Piece(text=after)]
        else:
            out.append(Piece(text=piece))
    return [p for p in out if p.is_ids or p.slot is not None or p.text]


def _without_trailing_spaces(pieces: list[Piece]) -> tuple[list[Piece], list[Piece]]:
    """``pieces`` minus the spaces ending their last constant text, and those spaces as a piece."""
    if not pieces or pieces[-1].is_ids or pieces[-1].slot is not None or not pieces[-1].text.endswith(" "):
        return pieces, []
    kept = pieces[-1].text.rstrip(" ")
    return pieces[:-1] + ([Piece(text=kept)] if kept else []), [Piece(text=pieces[-1].text[len(kept):])]


def _prompt_and_reply(user: list[Piece], assistant: list[Piece]) -> tuple[list[Piece], list[Piece], list[Piece]]:
    """``user``, the assistant framing before its content (prompt) and the reply.

    Spaces that end the prompt framing (the head, or the user part when there is no head) start the
    reply instead: tokenizers attach a space to the word after it.
    """
    at = next(i for i, p in enumerate(assistant) if p.slot is not None)
    head, reply = assistant[:at], assistant[at:]
    if head:
        head, spaces = _without_trailing_spaces(head)
    else:
        user, spaces = _without_trailing_spaces(user)
    return user, head, spaces + reply


def compile_template(template: TemplateSpec, tokenizer: Any) -> ChatTemplate:
    """``template`` compiled for ``tokenizer`` (cached: the same pair returns the same object)."""
    key = (id(template), id(tokenizer))
    cached = _compiled.get(key)
    if cached is not None and cached[0] is template and cached[1] is tokenizer:
        return cached[2]
    user, head, reply = _prompt_and_reply(_compile_part(template.user, tokenizer, CONTENT),
                                          _compile_part(template.assistant, tokenizer, CONTENT))
    compiled = ChatTemplate(
        tokenizer, name=template.name, prefix=_compile_part(template.prefix, tokenizer, None),
        system=_compile_part(template.system, tokenizer, SYSTEM), user=user,
        head=head, reply=reply, end=_compile_part(template.assistant_end, tokenizer, None),
        turn_sep=_compile_part(template.turn_sep, tokenizer, None),
        final_sep=_compile_part(template.final_sep, tokenizer, None), default_system=template.default_system,
        stop_words=template.stop_words)
    if len(_compiled) >= 16:
        _compiled.pop(next(iter(_compiled)))
    _compiled[key] = (template, tokenizer, compiled)
    return compiled


_compiled: dict[tuple[int, int], tuple[TemplateSpec, Any, ChatTemplate]] = {}


def batch_tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens, as ``tokenizer.encode(t, add_special_tokens=False)``."""
    return [list(ids) for ids in _token_lists(tokenizer, texts)[1]]


def _token_lists(tokenizer: Any, texts: list[str]) -> tuple[list[int], Iterable[Sequence[int]]]:
    """How many ids each text gives and, lazily, those ids: one batched call, no special tokens added.

    A fast tokenizer's own batch call (multi-threaded in Rust, no offsets) when the backend adds
    nothing (no truncation, padding or special-token splitting the wrapper would not do); each
    encoding's ids become a list only when read.
    """
    if not texts:
        return [], []
    backend = getattr(tokenizer, "_tokenizer", None)
    if (backend is not None and hasattr(backend, "encode_batch") and backend.truncation is None
            and backend.padding is None
            and bool(getattr(backend, "encode_special_tokens", False)) == bool(getattr(tokenizer, "split_special_tokens", False))):
        fast = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        encodings = fast(texts, add_special_tokens=False)
        return [len(enc) for enc in encodings], (enc.ids for enc in encodings)
    try:
        lists = list(tokenizer(texts, add_special_tokens=False, truncation=False, padding=False)["input_ids"])
    except Exception:
        lists = [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    return [len(ids) for ids in lists], lists
