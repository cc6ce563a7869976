"""Typed specs that plugins register through the hooks in :mod:`xt.hookspecs`.

Pure Python: importing this module imports no torch, so ``xt --help`` and ``xt list`` stay fast.
``plugin`` is filled in by the registry with the distribution that registered the spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

MODEL_KINDS = ("causal-lm", "vision-encoder", "multimodal")
ROLES = ("system", "user", "assistant")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class RowError(ValueError):
    """Raised by a dataset map for a row that does not fit; the message says why."""


@dataclass(frozen=True)
class RunContext:
    """What the run knows that a plugin callable may need, passed as an explicit argument.

    ``image_folder`` is where rows' relative image paths live (``--image-folder``), ``model_args`` the
    run's extra model arguments (``--set model_args.KEY=VALUE``), ``rank`` / ``world_size`` this
    process's place in a multi-process run and ``run_dir`` the run folder (None outside training).
    The parts that can change processed data (image folder, model args) are part of the data cache key.
    """

    image_folder: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    run_dir: str | None = None

    def data_fingerprint(self) -> dict[str, Any]:
        """The fields that can change what a dataset map returns (for the data cache key)."""
        import os

        folder = os.path.abspath(os.path.expanduser(self.image_folder)) if self.image_folder else None
        return {"image_folder": folder, "model_args": dict(self.model_args)}


@dataclass
class Spec:
    """Fields every registration has."""

    name: str
    description: str = ""
    aliases: Sequence[str] = ()
    plugin: str = ""

    def problems(self) -> list[str]:
        """What is wrong with this registration (empty when well-formed)."""
        out = []
        for n in (self.name, *self.aliases):
            if not isinstance(n, str) or not _NAME_RE.match(n):
                out.append(f"name {n!r} must be lower-case letters, digits, '.', '_' or '-'")
        return out


@dataclass
class ModelSpec(Spec):
    """A model family, preset or encoder.

    ``load_model(source, **kwargs)`` returns a ``torch.nn.Module``; kwargs are Hugging Face
    ``from_pretrained`` arguments (``dtype``, ``attn_implementation``, ``quantization_config`` ...).
    ``load_tokenizer(source)`` returns a tokenizer (or processor for multimodal models).
    ``config()`` returns the architecture's ``PretrainedConfig`` without downloading weights, so a
    dry run can count parameters offline. ``source`` None means the loader needs no files (a preset
    built from a config).

    Fields the core reads for models that need more than a causal LM (all optional):
    ``stages`` maps ``--stage NAME`` to config defaults; ``collator`` names the collator training
    uses unless the config names one; ``batch_sampler(dataset, micro_batch_size, *, rank,
    world_size, seed, shuffle, group_by_length, drop_last)`` replaces the core's batch sampler;
    ``tokenizer_model_args`` True passes the run's ``model_args`` to ``load_tokenizer`` as keywords;
    ``answer_image(chat_model, messages, image, *, max_new_tokens, temperature, top_p)`` answers
    ``xt chat --image`` (``chat_model`` holds the loaded model, tokenizer and template). ``extra``
    is for the plugin's own data: the core never reads it.
    """

    source: str | None = None
    kind: str = "causal-lm"
    load_model: Callable[..., Any] | None = None
    load_tokenizer: Callable[..., Any] | None = None
    config: Callable[[], Any] | None = None
    lora_targets: Sequence[str] | str = "all-linear"
    default_template: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    collator: str | None = None
    batch_sampler: Callable[..., Any] | None = None
    tokenizer_model_args: bool = False
    answer_image: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.kind not in MODEL_KINDS:
            out.append(f"kind {self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        if not isinstance(self.stages, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) for k, v in self.stages.items()):
            out.append("stages must map stage names to dicts of config defaults")
        if self.collator is not None and not isinstance(self.collator, str):
            out.append("collator must be a collator name")
        if not isinstance(self.tokenizer_model_args, bool):
            out.append("tokenizer_model_args must be True or False")
        for attr in ("load_model", "load_tokenizer", "config", "batch_sampler", "answer_image"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                out.append(f"{attr} must be callable")
        if not isinstance(self.lora_targets, str) and not all(isinstance(t, str) for t in self.lora_targets):
            out.append("lora_targets must be 'all-linear' or a list of module names")
        return out


@dataclass
class DatasetSpec(Spec):
    """A dataset: where rows come from and how one row becomes a conversation.

    Rows come from ``generate(split, seed)`` when given, else ``data_files`` (local paths or globs),
    else ``source`` (a hub dataset id with ``load_kwargs``). ``map_row(row)`` returns
    ``{"messages": [{"role", "content"}...], "images"?: [...]}`` or raises :class:`RowError`.
    ``scorer(prediction, reference)`` (optional) returns 1.0 for a correct generation, used by eval.
    With ``pass_context`` True the map is called as ``map_row(row, context)`` with the run's
    :class:`RunContext` (e.g. to find images under its ``image_folder``); the context's data
    fingerprint is then part of the data cache key. ``offline_hint`` replaces the generic advice when
    the dataset's hub source cannot be reached. ``objective`` names the objective whose rows
    ``map_row`` returns (e.g. ``dpo`` for prompt/chosen/rejected rows): that objective checks them and
    is the run's default; None means conversations, as ``sft`` takes. ``extra`` is for the plugin's own data.
    """

    map_row: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    source: str | None = None
    data_files: Sequence[str] = ()
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    generate: Callable[..., list[dict[str, Any]]] | None = None
    splits: Sequence[str] = ("train",)
    sample_rows: Sequence[dict[str, Any]] = ()
    default_template: str | None = None
    scorer: Callable[[str, str], float] | None = None
    pass_context: bool = False
    offline_hint: str | None = None
    objective: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = super().problems()
        if self.objective is not None and not isinstance(self.objective, str):
            out.append("objective must be an objective name")
        if not isinstance(self.pass_context, bool):
            out.append("pass_context must be True or False")
        if self.offline_hint is not None and not isinstance(self.offline_hint, str):
            out.append("offline_hint must be a string")
        if not callable(self.map_row):
            out.append("map_row is required and must be callable")
        if self.generate is not None and not callable(self.generate):
            out.append("generate must be callable")
        if self.scorer is not None and not callable(self.scorer):
            out.append("scorer must be callable")
        return out

    def map(self, row: dict[str, Any], context: RunContext | None = None) -> dict[str, Any]:
        """``map_row`` called as declared: ``map_row(row, context)`` when ``pass_context``, else ``map_row(row)``."""
        if self.pass_context:
            return self.map_row(row, context or RunContext())
        return self.map_row(row)


class SpecialToken(str):
    """A template part that stands for the tokenizer's own BOS or EOS token."""


BOS = SpecialToken("bos")
EOS = SpecialToken("eos")

#: One piece of a template part: text (may hold ``{content}`` / ``{system}``), a token id, BOS or EOS.
Piece = Union[str, int, SpecialToken]  # noqa: UP007 (runtime alias on Python 3.10)
Part = Union[str, Sequence[Piece]]  # noqa: UP007


@dataclass
class TemplateSpec(Spec):
    """A chat template, as parts made of text, literal token ids, ``BOS`` and ``EOS``.

    A conversation renders as ``prefix``, then ``system`` (when there is a system message or a
    ``default_system``), then for each turn ``user`` (the prompt, no loss), ``assistant`` followed
    by ``assistant_end`` (both carry loss) and ``turn_sep`` (no loss) between replies, ``final_sep`` (no
    loss) after the last one. Fixed framing before
    ``{content}`` in ``assistant`` is prompt (no loss), except spaces that end the prompt framing (that
    framing, or ``user`` when there is none), which start the reply because tokenizers attach a
    space to the following word. ``{content}`` in ``user`` /
    ``assistant`` and ``{system}`` in ``system`` are replaced by the message text. Generation stops
    at the token ids in ``assistant_end`` and at ``stop_words``. :mod:`xt.template` compiles it per
    tokenizer (:meth:`compile`).
    """

    user: Part = "{content}"
    assistant: Part = "{content}"
    assistant_end: Part = (EOS,)
    system: Part = "{system}"
    prefix: Part = (BOS,)
    turn_sep: Part = ""
    final_sep: Part = ""
    default_system: str | None = None
    stop_words: Sequence[str] = ()

    def problems(self) -> list[str]:
        out = super().problems()
        if "{content}" not in _text_of(self.user):
            out.append("user part must contain '{content}'")
        if "{content}" not in _text_of(self.assistant):
            out.append("assistant part must contain '{content}'")
        if "{system}" not in _text_of(self.system):
            out.append("system part must contain '{system}'")
        return out

    def for_tokenizer(self, tokenizer: Any) -> TemplateSpec:
        """The concrete template for ``tokenizer``: this one (``auto`` reads it from the tokenizer)."""
        return self

    # The engine lives in xt.template (compiled once per tokenizer); these delegate so callers hold one object.
    def compile(self, tokenizer: Any) -> Any:
        """This template compiled for ``tokenizer``: an :class:`xt.template.ChatTemplate`."""
        from xt.template import compile_template

        return compile_template(self, tokenizer)

    def encode(self, conversation: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
        """Conversation -> ``{"input_ids", "labels"}`` (labels -100 outside assistant replies)."""
        return self.compile(tokenizer).encode(conversation)

    def encode_prompt(self, messages: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
        """Messages ending with a user turn -> prompt ids ending where the assistant reply starts."""
        return self.compile(tokenizer).encode_prompt(messages)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Token ids that end an assistant reply (generation stops on them)."""
        return self.compile(tokenizer).stop_token_ids()


def _text_of(part: Part) -> str:
    if isinstance(part, str) and not isinstance(part, SpecialToken):
        return part
    return "".join(p for p in part if isinstance(p, str) and not isinstance(p, SpecialToken))


@dataclass
class CollatorSpec(Spec):
    """A collator: ``factory(tokenizer=..., **options)`` -> ``fn(samples) -> dict of tensors``."""

    factory: Callable[..., Callable[[list[dict[str, Any]]], dict[str, Any]]] | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        if not callable(self.factory):
            out.append("factory is required and must be callable")
        return out


@dataclass
class ExporterSpec(Spec):
    """An export target: ``export(run_dir, out_dir, **options)`` writes a deployable folder.

    ``chat(options) -> responder`` (optional) serves ``xt chat --backend NAME`` from what it exports.
    """

    export: Callable[..., Any] | None = None
    chat: Callable[..., Any] | None = None

    def problems(self) -> list[str]:
        out = super().problems()
        if not callable(self.export):
            out.append("export is required and must be callable")
        if self.chat is not None and not callable(self.chat):
            out.append("chat must be callable")
        return out


@dataclass
class ObjectiveSpec(Spec):
    """A training objective: the rows it takes, the token sequences a row becomes, and its loss.

    ``loss(model, batch, context) -> (loss_sum, metrics)`` (required): ``loss_sum`` is a 0-d tensor
    with graph, the *sum* of the objective's per-unit losses over ``batch``; ``metrics`` maps names to
    floats or 0-d tensors, each also a sum over those units. ``units(batch) -> int`` (required) counts
    the units (SFT: label tokens; preference objectives: pairs). An optimizer step's loss is the sum
    of ``loss_sum`` over its window of micro-batches on all ranks divided by the sum of ``units``, and
    each metric is reported the same way, so accumulation and ranks change nothing as long as
    ``loss_sum`` is additive over units (the conformance kit checks this).

    ``sequences(row) -> list[conversation]`` (default ``[row]``): the conversations one mapped row
    becomes. Each is encoded with the run's template into one token sequence with SFT's labels; the
    sequences of a row form one *sample* that is dropped, packed and batched whole (for a preference
    pair: prompt + chosen, then prompt + rejected). ``row_problems(row) -> list[str]`` (default
    :func:`conversation_problems`) says what is wrong with a mapped row.

    ``collator`` names the collator the objective needs (None: the config's or the model's).
    ``reference`` True gives the loss a reference model (``context.reference``): the model with its
    adapter disabled under LoRA/QLoRA, a frozen copy under full training. ``defaults`` lists the
    objective's options (``--set objective_args.KEY=VALUE``) with their defaults; other keys are
    refused, and ``check_options(args)`` raises ``XtError`` for a bad value before anything is loaded.
    ``prepare_model(model, context)`` may change the model before training (e.g. add a
    head); ``save(model, tokenizer, template, out_dir, *, adapter, context)`` replaces the core's
    saving of ``final/``. ``precompute(reference, batch, context) -> {name: tensor (S,)}`` computes
    per-sequence values with the reference model; with ``precompute_reference`` the core runs it once
    over the data before training, caches the result with the data, and hands the loss
    ``batch["reference_<name>"]`` instead of a reference model. ``sample_rows`` are mapped rows the
    conformance kit runs the objective on.
    """

    loss: Callable[..., Any] | None = None
    units: Callable[[dict[str, Any]], int] | None = None
    sequences: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    row_problems: Callable[[Any], list[str]] | None = None
    collator: str | None = None
    reference: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    check_options: Callable[[dict[str, Any]], None] | None = None
    prepare_model: Callable[..., Any] | None = None
    save: Callable[..., Any] | None = None
    precompute: Callable[..., Any] | None = None
    sample_rows: Sequence[dict[str, Any]] = ()

    def problems(self) -> list[str]:
        out = super().problems()
        if self.precompute is not None and not self.reference:
            out.append("precompute needs reference=True (it computes the reference model's values)")
        for attr in ("loss", "units"):
            if not callable(getattr(self, attr)):
                out.append(f"{attr} is required and must be callable")
        for attr in ("sequences", "row_problems", "check_options", "prepare_model", "save", "precompute"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                out.append(f"{attr} must be callable")
        if self.collator is not None and not isinstance(self.collator, str):
            out.append("collator must be a collator name")
        if not isinstance(self.reference, bool):
            out.append("reference must be True or False")
        if not isinstance(self.defaults, dict) or not all(isinstance(k, str) for k in self.defaults):
            out.append("defaults must map option names to default values")
        return out

    def row_sequences(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The conversations ``row`` becomes (``sequences(row)``, or the row itself)."""
        return [row] if self.sequences is None else list(self.sequences(row))

    def check_row(self, row: Any) -> list[str]:
        """What is wrong with a mapped row (``row_problems``, or the conversation checks)."""
        return list((self.row_problems or conversation_problems)(row))

    def options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """``defaults`` overlaid with the run's ``objective_args``; raises ValueError naming an unknown key."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"objective '{self.name}' has no option {', '.join(map(repr, unknown))} "
                             f"(its options: {known})")
        return {**self.defaults, **given}


@dataclass
class ObjectiveContext:
    """What an objective's ``loss`` / ``prepare_model`` / ``save`` may use besides the model and batch.

    ``args`` are the objective's options (its ``defaults`` overlaid with ``objective_args``);
    ``reference()`` (objectives with ``reference=True``) is a context manager giving the reference
    model to call under ``torch.no_grad()``; ``training`` is False during validation.
    """

    args: dict[str, Any] = field(default_factory=dict)
    reference: Callable[[], Any] | None = None
    tokenizer: Any = None
    pad_token_id: int = 0
    z_loss: float = 0.0
    training: bool = True


def content_parts(content: list[Any], where: str) -> list[str | dict[str, Any]]:
    """OpenAI-style content parts -> their texts (str) and image parts (the part's dict), in order.

    Parts are ``{"type": "text", "text"}``, ``{"type": "image", ...}`` or ``{"type": "image_url", ...}``;
    anything else raises :class:`RowError` naming ``where``.
    """
    pieces: list[str | dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict) or "type" not in part:
            raise RowError(f"{where}: content parts must be dicts with a 'type'")
        if part["type"] == "text":
            pieces.append(str(part.get("text", "")))
        elif part["type"] in ("image", "image_url"):
            pieces.append(part)
        else:
            raise RowError(f"{where}: unsupported content part type {part['type']!r}")
    return pieces


def conversation_problems(conv: Any) -> list[str]:
    """What is wrong with a canonical conversation (empty when valid)."""
    if not isinstance(conv, dict):
        return [f"a conversation must be a dict, got {type(conv).__name__}"]
    msgs = conv.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            out.append(f"message {i} must be a dict")
            continue
        if m.get("role") not in ROLES:
            out.append(f"message {i} has role {m.get('role')!r}, expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            out.append(f"message {i} content must be a string")
        elif m.get("role") == "assistant" and not m["content"].strip():
            out.append(f"message {i} is an empty assistant reply")
        if "weight" in m and (m.get("role") != "assistant" or m["weight"] not in (0, 1)):
            out.append(f"message {i}: 'weight' must be 0 or 1 and only on an assistant reply")
        if m.get("role") == "system" and i != 0:
            out.append(f"message {i}: a system message may only come first")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in msgs):
        out.append("no assistant reply to learn from")
    if "images" in conv and not isinstance(conv["images"], list):
        out.append("'images' must be a list")
    return out


SPEC_KINDS: dict[str, type[Spec]] = {
    "models": ModelSpec,
    "datasets": DatasetSpec,
    "templates": TemplateSpec,
    "collators": CollatorSpec,
    "exporters": ExporterSpec,
    "objectives": ObjectiveSpec,
}
HOOK_OF_KIND = {
    "models": "model_loader",
    "datasets": "dataset_map",
    "templates": "prompt_template",
    "collators": "collate",
    "exporters": "exporter",
    "objectives": "objective",
}
