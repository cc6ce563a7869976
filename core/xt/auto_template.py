"""The ``auto`` template: xt's framing read from a tokenizer's own Jinja ``chat_template``.

Probe conversations whose messages are sentinel words are rendered with
``apply_chat_template(tokenize=False)`` and the output is split at the sentinels:

* the text before the first user message is the prefix (plus the system part, found by rendering
  with and without a system message; text the template adds without one is its default system);
* between a user message and the reply is prompt framing (no loss);
* after a reply, up to and including its first special token, is the reply's end (loss); what
  follows it before the next user message is the turn separator, after the last reply the final
  separator (both no loss);
* the end's text is the stop word.

The derived :class:`~xt.specs.TemplateSpec` is then verified by rendering: on probe conversations
(with and without a system message, one to three turns) its training ids and chat prompts must equal
``apply_chat_template``'s. A template that cannot be split this way (it rewrites or drops earlier
turns, renders turns differently by position, rejects system messages) is refused with one
sentence naming the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from xt.errors import XtError
from xt.specs import TemplateSpec

_SYSTEM = "XtProbeSystem"
_USERS = ("XtProbeUserOne", "XtProbeUserTwo", "XtProbeUserThree")
_REPLIES = ("XtProbeReplyOne", "XtProbeReplyTwo", "XtProbeReplyThree")

#: Realistic probe texts for the verification (spaces, punctuation, a newline inside a reply).
_CHECK_SYSTEM = "You answer briefly."
_CHECK_TURNS = (("Capital of France?", "Paris."), ("And of Italy, please?", "Rome, of course."),
                ("Name two colours.", "Blue\nand green."))


class TemplateSplitError(XtError):
    """The chat template cannot be split into xt's prompt / reply / end framing."""


def _messages(turns: int, system: str | None, texts: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, reply in texts[:turns]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False,
            tokenize: bool = False) -> Any:
    """``apply_chat_template`` on ``messages`` (text, or ids when ``tokenize``); a failure is a split error."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=generation_prompt,
                                             return_dict=False)
    except Exception as exc:  # the template's own raise_exception, or a Jinja error
        what = "a system message" if messages[0]["role"] == "system" else "a plain conversation"
        raise TemplateSplitError(f"fails to render {what} ({_first_line(exc)})") from exc


def _split(text: str, sentinels: list[str]) -> list[str]:
    """``text`` cut at each sentinel in order: the ``len(sentinels) + 1`` pieces between them."""
    pieces, rest = [], text
    for sentinel in sentinels:
        if rest.count(sentinel) != 1:
            raise TemplateSplitError(f"drops or repeats message text (the probe {sentinel!r} appears "
                                     f"{rest.count(sentinel)} times where it should appear once)")
        before, rest = rest.split(sentinel)
        pieces.append(before)
    return pieces + [rest]


def _special_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """Where the tokenizer's added / special tokens occur in ``text`` (start, end)."""
    tokens = [t for t in getattr(tokenizer, "added_tokens_encoder", {}) if t]
    spans = []
    for token in tokens:
        start = text.find(token)
        while start != -1:
            spans.append((start, start + len(token)))
            start = text.find(token, start + 1)
    return sorted(spans)


def _safe_cut(tokenizer: Any, text: str, at: int) -> int:
    """``at`` moved right until it is not inside a special token of ``text``."""
    for start, end in _special_spans(tokenizer, text):
        if start < at < end:
            at = end
    return at


def _common_suffix(texts: list[str]) -> str:
    shortest = min(texts, key=len)
    n = 0
    while n < len(shortest) and len({t[len(t) - n - 1] for t in texts}) == 1:
        n += 1
    return shortest[len(shortest) - n:]


def _reply_end(tokenizer: Any, after_last: str, between: str) -> str:
    """The reply's end: ``after_last`` up to and including its first special token, else their common prefix."""
    spans = _special_spans(tokenizer, after_last)
    if spans:
        return after_last[:min(spans)[1]]
    n = 0
    while n < min(len(after_last), len(between)) and after_last[n] == between[n]:
        n += 1
    return after_last[:n]


@dataclass
class _Framing:
    first_user: str  # text before the first user message (no system message)
    first_user_system: str  # the same with a system message
    user_after: str  # between a user message and the reply
    after_reply: str  # between a reply and the next user message
    after_last: str  # after the last reply


def _framing(tokenizer: Any) -> _Framing:
    plain = _split(_render(tokenizer, _messages(2, None, tuple(zip(_USERS, _REPLIES)))),
                   [_USERS[0], _REPLIES[0], _USERS[1], _REPLIES[1]])
    with_system = _render(tokenizer, _messages(1, _SYSTEM, tuple(zip(_USERS, _REPLIES))))
    first_user_system = _split(with_system, [_USERS[0]])[0]
    if plain[1] != plain[3]:
        raise TemplateSplitError("frames the first and the second reply differently")
    return _Framing(first_user=plain[0], first_user_system=first_user_system, user_after=plain[1],
                    after_reply=plain[2], after_last=plain[4])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _system_parts(tokenizer: Any, framing: _Framing, user_before: str) -> tuple[str, str, str | None]:
    """``(prefix, system part with {system}, default system)`` from the text before the first user message."""
    plain = framing.first_user[:len(framing.first_user) - len(user_before)]
    with_system = framing.first_user_system[:len(framing.first_user_system) - len(user_before)]
    if with_system.count(_SYSTEM) != 1:
        raise TemplateSplitError("does not render the system message once before the first user message")
    before, after = with_system.split(_SYSTEM)
    if before.startswith(plain):  # no default system: the plain prefix is all of the prefix
        return plain, before[len(plain):] + "{system}" + after, None
    if plain.startswith(before) and plain.endswith(after) and len(plain) > len(before) + len(after):
        default = plain[len(before):len(plain) - len(after)]
        bos = tokenizer.bos_token or ""
        prefix = bos if bos and before.startswith(bos) else ""
        return prefix, before[len(prefix):] + "{system}" + after, default
    raise TemplateSplitError("frames the start of the conversation in a way that differs with and without a "
                             "system message beyond adding the system text")


def _user_and_system(tokenizer: Any, framing: _Framing, shared: str) -> tuple[str, tuple[str, str, str | None]]:
    """The framing every user message starts with, and :func:`_system_parts` for it.

    ``shared`` is the text every user message follows. Tried in order: ``shared`` from its first special
    token on (``<|im_start|>user\\n``), none (the text ends the part before), all of ``shared``.
    """
    spans = _special_spans(tokenizer, shared)
    candidates = dict.fromkeys([shared[min(spans)[0]:] if spans else "", "", shared])
    for user_before in candidates:
        try:
            return user_before, _system_parts(tokenizer, framing, user_before)
        except TemplateSplitError as exc:
            error = exc
    raise error


def derive_template(tokenizer: Any, name: str = "auto") -> TemplateSpec:
    """The :class:`TemplateSpec` read from ``tokenizer.chat_template`` and verified by rendering."""
    model = getattr(tokenizer, "name_or_path", "") or "this model"
    try:
        spec = _derive(tokenizer, name, model)
        _verify(spec, tokenizer)
    except TemplateSplitError as exc:
        raise XtError(f"The chat template of '{model}' cannot be used as template 'auto': it {exc}; "
                      f"choose a template with --template (see `xt list templates`).") from None
    return spec


def _derive(tokenizer: Any, name: str, model: str) -> TemplateSpec:
    framing = _framing(tokenizer)
    end = _reply_end(tokenizer, framing.after_last, framing.after_reply)
    if not end.strip():
        raise TemplateSplitError("puts nothing after a reply that could end it")
    if not framing.after_reply.startswith(end):
        raise TemplateSplitError("ends the last reply differently from earlier ones")
    between = framing.after_reply[len(end):]
    shared = [framing.first_user, framing.first_user_system, between]
    suffix = _common_suffix(shared)
    cut = max(_safe_cut(tokenizer, t, len(t) - len(suffix)) - (len(t) - len(suffix)) for t in shared)
    user_before, (prefix, system, default_system) = _user_and_system(tokenizer, framing, suffix[cut:])
    return TemplateSpec(
        name=name, description=f"Derived from the chat template of '{model}'.", prefix=prefix, system=system,
        user=user_before + "{content}" + framing.user_after, assistant="{content}", assistant_end=end,
        turn_sep=between[:len(between) - len(user_before)], final_sep=framing.after_last[len(end):],
        default_system=default_system, stop_words=(end.strip(),))


def _verify(spec: TemplateSpec, tokenizer: Any) -> None:
    """xt's ids equal ``apply_chat_template``'s on probe conversations, and so do the chat prompts."""
    compiled = spec.compile(tokenizer)
    for system in (None, _CHECK_SYSTEM):
        for turns in (1, 2, 3):
            messages = _messages(turns, system, _CHECK_TURNS)
            expected = _render(tokenizer, messages, tokenize=True)
            if compiled.encode({"messages": messages})["input_ids"] != list(expected):
                raise TemplateSplitError(f"renders a {turns}-turn conversation differently from the framing read "
                                         f"from its first turns (it rewrites or drops earlier turns)")
            prompt = _render(tokenizer, messages[:-1], generation_prompt=True, tokenize=True)
            if compiled.encode_prompt(messages[:-1]) != list(prompt):
                raise TemplateSplitError("adds a generation prompt that differs from the framing of a reply")


@dataclass
class AutoTemplateSpec(TemplateSpec):
    """The template read from the tokenizer's own ``chat_template`` (``default`` when it has none)."""

    fallback: str = "default"

    def for_tokenizer(self, tokenizer: Any) -> TemplateSpec:
        chat_template = getattr(tokenizer, "chat_template", None)
        if not isinstance(chat_template, str) or not chat_template:
            from xt.plugins import get_registry

            return get_registry().get("templates", self.fallback)
        cached = _derived.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer and cached[1] == chat_template:
            return cached[2]
        spec = replace(derive_template(tokenizer, self.name), aliases=())
        if len(_derived) >= 16:
            _derived.pop(next(iter(_derived)))
        _derived[id(tokenizer)] = (tokenizer, chat_template, spec)
        return spec

    def compile(self, tokenizer: Any) -> Any:
        return self.for_tokenizer(tokenizer).compile(tokenizer)


#: Derived templates per tokenizer (id -> tokenizer, its chat_template, the spec).
_derived: dict[int, tuple[Any, str, TemplateSpec]] = {}
