"""Chat with a model or a trained run: load once, then answer one prompt or run an interactive loop.

A run directory knows its base model, adapter and template (``RUN/run.json``), so ``xt chat RUN``
frames prompts exactly as training did and stops at the template's end token and stop words.
Backends are *responders*: ``respond(messages, on_text) -> reply`` where ``on_text`` receives the
reply incrementally (streaming). The core provides the Hugging Face backend; a plugin provides
another by giving its exporter spec a ``chat`` attribute ``chat(options) -> responder``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xt.errors import XtError

Responder = Callable[[list[dict[str, Any]], "Callable[[str], None] | None"], str]
EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


@dataclass
class ChatOptions:
    """Everything ``xt chat`` was asked for (backend-independent)."""

    target: str
    adapter: str | None = None
    template: str | None = None
    system: str | None = None
    image: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    bits: int | None = None
    trust_remote_code: bool = False


@dataclass
class ChatModel:
    """A loaded model ready to answer: module, tokenizer, template and where they came from."""

    model: Any
    tokenizer: Any
    template: Any
    spec: Any
    kind: str = "causal-lm"
    run_dir: Path | None = None
    model_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    """One reply: its text, how many tokens were generated and why generation stopped."""

    text: str
    new_tokens: int
    stop_reason: str  # "eos" | "stop_word" | "length"


# --------------------------------------------------------------------------- loading


def _quantization(bits: int | None) -> Any:
    if bits is None:
        return None
    if bits not in (4, 8):
        raise XtError(f"--bits must be 4 or 8, got {bits}.")
    import torch

    from xt.model.loading import bitsandbytes_config

    return bitsandbytes_config(bits, torch.float32, f"--bits {bits}")


def load_chat_model(options: ChatOptions) -> ChatModel:
    """Load what ``options.target`` names (run directory, registered model, folder or hub id)."""
    import torch

    from xt.export import (
        apply_adapter,
        check_adapter_base,
        describe_run,
        load_base,
        load_saved_model,
        load_tokenizer_for,
        resolve_base,
        template_for,
    )
    from xt.model.loading import disable_bnb_avx512bf16
    from xt.run import is_run_dir

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    kwargs: dict[str, Any] = {}
    quant = _quantization(options.bits)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if options.trust_remote_code:
        kwargs["trust_remote_code"] = True
    adapter = Path(options.adapter) if options.adapter else None
    if adapter is not None and not adapter.is_dir():
        raise XtError(f"Adapter folder '{adapter}' does not exist; pass the final/ folder of a LoRA run.")

    run_dir = Path(options.target) if is_run_dir(options.target) else None
    if run_dir is not None:
        run = describe_run(run_dir)
        spec, source = resolve_base(run.model, run.source)
        template_name = options.template or run.template
        kind = run.kind
        model_args = run.model_args
        if run.adapter:
            if adapter is not None:
                raise XtError(f"Run '{run_dir}' already has an adapter; drop --adapter or pass the base model.")
            adapter, model_dir = run.final_dir, None
        else:
            source, model_dir = str(run.final_dir), run.final_dir
            model_args = {}  # the saved folder is complete
    else:
        spec, source = resolve_base(options.target)
        if adapter is not None:
            check_adapter_base(options.target, adapter)
        template_name, kind = options.template, spec.kind
        model_args = {}
        model_dir = Path(source) if source and Path(source).is_dir() else None

    tokenizer = load_tokenizer_for(spec, source, prefer=adapter or model_dir, model_args=model_args)
    template = template_for(template_name, (adapter, model_dir), spec).for_tokenizer(tokenizer)
    if run_dir is not None and model_dir is not None:
        model = load_saved_model(spec, model_dir, dtype, **kwargs)  # a full run: refused without its weights
    else:
        model = load_base(spec, source, dtype, model_args, **kwargs)
    disable_bnb_avx512bf16(model)
    if adapter is not None:
        model = apply_adapter(model, adapter, merge=quant is None)
    disable_bnb_avx512bf16(model)
    model.eval()
    return ChatModel(model=model, tokenizer=tokenizer, template=template, spec=spec, kind=kind,
                     run_dir=run_dir, model_dir=model_dir)


# --------------------------------------------------------------------------- generation


class StopWordStreamer:
    """A transformers streamer that decodes incrementally, hides stop words and stops on them.

    Text that could still turn into a stop word is held back until it cannot; ``stopped`` becomes
    True once a stop word appeared (the caller's stopping criterion reads it).
    """

    def __init__(self, tokenizer: Any, stop_words: Sequence[str], on_text: Callable[[str], None] | None,
                 prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stop_words = [w for w in stop_words if w]
        self.on_text = on_text
        self.prompt_length = prompt_length
        self.skipped_prompt = False
        self.token_ids: list[int] = []
        self.emitted = 0
        self.stopped = False
        self.ended = False
        self.text = ""

    def end_if_needed(self) -> None:
        """Flush held-back text when the generator did not call :meth:`end`."""
        if not self.ended:
            self.end()

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def _safe_end(self, text: str) -> int:
        """How much of ``text`` can be shown: up to a stop word, minus a tail that may start one."""
        cut = len(text)
        for word in self.stop_words:
            pos = text.find(word)
            if pos >= 0:
                self.stopped = True
                cut = min(cut, pos)
        if self.stopped:
            return cut
        for word in self.stop_words:
            for k in range(min(len(word) - 1, len(text)), 0, -1):
                if text.endswith(word[:k]):
                    cut = min(cut, len(text) - k)
                    break
        if text.endswith("\ufffd"):  # an incomplete multi-byte character
            cut = min(cut, len(text) - 1)
        return cut

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not self.skipped_prompt:  # generate() first hands over the prompt
            self.skipped_prompt = True
            if len(ids) == self.prompt_length:
                return
        if self.stopped:
            return
        self.token_ids.extend(int(i) for i in ids)
        text = self._decoded()
        end = self._safe_end(text)
        self._emit(text[:end])

    def end(self) -> None:
        self.ended = True
        text = self._decoded()
        end = self._safe_end(text)
        if not self.stopped:
            end = len(text.rstrip("\ufffd"))
        self._emit(text[:end])

    def _emit(self, shown: str) -> None:
        if len(shown) > self.emitted:
            if self.on_text is not None:
                self.on_text(shown[self.emitted:])
            self.emitted = len(shown)
        self.text = shown


def generate_reply(chat_model: ChatModel, messages: list[dict[str, Any]], *, max_new_tokens: int = 256,
                   temperature: float = 0.0, top_p: float = 1.0,
                   on_text: Callable[[str], None] | None = None) -> Generation:
    """Answer the last user message, framed by the model's template; streams through ``on_text``.

    Uses :func:`xt.generation.generate`, the function eval during training uses.
    """
    if max_new_tokens < 1:
        raise XtError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0 or not 0 < top_p <= 1:
        raise XtError("--temperature must be >= 0 and --top-p in (0, 1].")
    from xt.generation import generate

    model, tokenizer, template = chat_model.model, chat_model.tokenizer, chat_model.template
    prompt_ids = template.encode_prompt(messages, tokenizer)
    stop_ids = template.stop_token_ids(tokenizer)
    streamer = StopWordStreamer(tokenizer, list(template.stop_words), on_text, len(prompt_ids))
    text = generate(model, tokenizer, template, messages, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, streamer=streamer)
    streamer.end_if_needed()
    new_ids = streamer.token_ids
    if new_ids and new_ids[-1] in stop_ids:
        reason = "eos"
    elif streamer.stopped:
        reason = "stop_word"
    else:
        reason = "length"
    return Generation(text=text.strip(), new_tokens=len(new_ids), stop_reason=reason)


def hf_responder(options: ChatOptions, chat_model: ChatModel | None = None) -> Responder:
    """The Hugging Face backend: transformers ``generate`` with the training template."""
    chat_model = chat_model or load_chat_model(options)
    if options.image:
        return _image_responder(options, chat_model)

    def respond(messages: list[dict[str, Any]], on_text: Callable[[str], None] | None = None) -> str:
        return generate_reply(chat_model, messages, max_new_tokens=options.max_new_tokens,
                              temperature=options.temperature, top_p=options.top_p, on_text=on_text).text

    return respond


def _image_responder(options: ChatOptions, chat_model: ChatModel) -> Responder:
    """Image chat comes from the model's plugin: ``ModelSpec.answer_image``."""
    answer = chat_model.spec.answer_image
    if not callable(answer):
        raise XtError(f"--image needs a multimodal model whose plugin provides image chat; "
                      f"'{options.target}' ({chat_model.spec.name}) is not one, so drop --image or pick a "
                      f"multimodal model or run.")
    if not Path(options.image).is_file():
        raise XtError(f"Image '{options.image}' does not exist; pass an existing image file to --image.")

    def respond(messages: list[dict[str, Any]], on_text: Callable[[str], None] | None = None) -> str:
        reply = answer(chat_model, messages, options.image, max_new_tokens=options.max_new_tokens,
                       temperature=options.temperature, top_p=options.top_p)
        if on_text is not None:
            on_text(reply)
        return reply

    return respond


def backend_responder(backend: str, options: ChatOptions) -> Responder:
    """``hf``, or the ``chat`` attribute of the exporter a plugin registered under ``backend``."""
    if backend == "hf":
        return hf_responder(options)
    from xt.plugins import get_registry

    spec = get_registry().get("exporters", backend)
    make = spec.chat
    if not callable(make):
        raise XtError(f"Backend '{backend}' ({spec.plugin}) offers no chat; use --backend hf.")
    return make(options)


# --------------------------------------------------------------------------- sessions


def chat_once(respond: Responder, prompt: str, system: str | None = None) -> str:
    """One answer to ``prompt`` (no streaming)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return respond(messages, None)


def chat_loop(respond: Responder, system: str | None = None, stdin: IO[str] | None = None,
              stdout: IO[str] | None = None, banner: str | None = None) -> int:
    """Interactive multi-turn chat; ``/reset`` forgets the history, ``/exit`` or EOF ends. Returns turns."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    base = [{"role": "system", "content": system}] if system else []
    history: list[dict[str, Any]] = list(base)
    if banner:
        stdout.write(banner + "\n")
    turns = 0
    while True:
        stdout.write(">>> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            stdout.write("\n")
            stdout.flush()
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if text.strip() in EXIT_COMMANDS:
            break
        if text.strip() == RESET_COMMAND:
            history = list(base)
            stdout.write("(history cleared)\n")
            stdout.flush()
            continue
        history.append({"role": "user", "content": text})

        def on_text(piece: str) -> None:
            stdout.write(piece)
            stdout.flush()

        reply = respond(history, on_text)
        stdout.write("\n")
        stdout.flush()
        history.append({"role": "assistant", "content": reply})
        turns += 1
    return turns
