"""Generate replies through a chat template: the one function chat and eval both use.

The prompt is built by the template engine (``template.compile(tokenizer)``, the same object that
encodes training samples), generation stops at the template's stop token ids and at its stop words,
and the stop word is cut from the text.
Generation leaves a model that is being trained exactly as it found it: train/eval mode, the
``use_cache`` setting, gradient checkpointing and every RNG state are restored afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

from xt.specs import TemplateSpec


@contextlib.contextmanager
def preserved_training_state(model: Any) -> Iterator[None]:
    """Eval mode + cache on inside, then mode, cache flag and RNG states (python, numpy, torch) restored."""
    import numpy as np
    import torch

    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    model.eval()
    if config is not None:
        config.use_cache = True
    try:
        with torch.no_grad():
            yield
    finally:
        if config is not None:
            config.use_cache = use_cache
        model.train(was_training)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _stop_criteria(tokenizer: Any, stop_words: Sequence[str], prompt_len: int) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnWords(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = []
            for row in input_ids:
                tail = tokenizer.decode(row[prompt_len:][-24:], skip_special_tokens=False)
                done.append(any(w in tail for w in stop_words))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnWords()])


def decode_reply(tokenizer: Any, ids: list[int], stop_ids: Sequence[int], stop_words: Sequence[str]) -> str:
    """Generated ids -> text, cut at the first stop id and the first stop word."""
    for i, tid in enumerate(ids):
        if tid in stop_ids:
            ids = ids[:i]
            break
    text = tokenizer.decode(ids, skip_special_tokens=False)
    for word in stop_words:
        if word and word in text:
            text = text[: text.index(word)]
    for special in getattr(tokenizer, "all_special_tokens", []) or []:
        if special and special not in stop_words:
            text = text.replace(special, "")
    return text.strip()


def generate_from_ids(model: Any, tokenizer: Any, template: TemplateSpec, prompts: Sequence[Sequence[int]], *,
                      max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                      stop_words: Sequence[str] = (), streamer: Any = None, synced_gpus: bool = False) -> list[str]:
    """Replies to already-encoded prompts (left-padded into one batch), cleaned of stop ids / words."""
    import torch
    from transformers import GenerationConfig

    from xt.model.loading import safe_pad_id

    template = template.for_tokenizer(tokenizer)
    stop_words = tuple(dict.fromkeys([*template.stop_words, *stop_words]))
    stop_ids = template.stop_token_ids(tokenizer)
    pad_id = safe_pad_id(tokenizer, model)
    prompts = [list(p) for p in prompts]
    width = max(len(p) for p in prompts)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
        top_p=top_p if temperature > 0 else None, top_k=None, eos_token_id=stop_ids, pad_token_id=pad_id,
        use_cache=True,
    )
    kwargs: dict[str, Any] = {"generation_config": gen_config, "streamer": streamer}
    if stop_words:
        kwargs["stopping_criteria"] = _stop_criteria(tokenizer, stop_words, width)
    if synced_gpus:
        kwargs["synced_gpus"] = True
    with preserved_training_state(model):
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return [decode_reply(tokenizer, row[width:].tolist(), stop_ids, stop_words) for row in output]


def generate_batch(model: Any, tokenizer: Any, template: TemplateSpec, conversations: Sequence[Sequence[dict]], *,
                   max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                   stop_words: Sequence[str] = (), streamer: Any = None, synced_gpus: bool = False) -> list[str]:
    """Replies to several prompts at once; each list of messages ends with a user turn."""
    prompts = [template.encode_prompt(list(messages), tokenizer) for messages in conversations]
    return generate_from_ids(model, tokenizer, template, prompts, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, stop_words=stop_words, streamer=streamer,
                             synced_gpus=synced_gpus)


def generate(model: Any, tokenizer: Any, template: TemplateSpec, messages: Sequence[dict], *,
             max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
             stop_words: Sequence[str] = (), streamer: Any = None) -> str:
    """The reply to ``messages`` (which end with a user turn) as text, stop word removed."""
    return generate_batch(model, tokenizer, template, [messages], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, stop_words=stop_words, streamer=streamer)[0]
