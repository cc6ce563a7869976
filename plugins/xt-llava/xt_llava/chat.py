"""Answer questions about an image with a llava model, framed by the run's chat template.

``answer`` is the plain function; ``answer_image`` is what llava model specs offer to ``xt chat
RUN --image PATH`` as ``ModelSpec.answer_image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xt.api import XtError

from xt_llava.processor import IMAGE_TOKEN


def with_image_placeholder(messages: Sequence[dict[str, Any]], n_images: int = 1) -> list[dict[str, Any]]:
    """The messages with ``<image>\\n`` at the start of the first user turn (unless already there)."""
    out = [dict(m) for m in messages]
    if any(IMAGE_TOKEN in str(m.get("content", "")) for m in out):
        return out
    first = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
    if first is None:
        raise XtError("A prompt about an image needs a user message.")
    out[first]["content"] = (IMAGE_TOKEN + "\n") * n_images + str(out[first]["content"])
    return out


def prepare_inputs(processor: Any, template: Any, image: str, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``input_ids`` (image tokens expanded), ``attention_mask`` and ``pixel_values`` for one prompt."""
    import torch

    from xt_llava.collate import expand_images, pixel_values

    prompt = template.encode_prompt(with_image_placeholder(messages), processor)
    image_token_id = int(processor.tokenizer.convert_tokens_to_ids(processor.image_token))
    ids, _, _, kept = expand_images(prompt, [-100] * len(prompt), None, image_token_id, processor.tokens_per_image, 1)
    if kept != 1:
        raise XtError("The prompt lost its '<image>' placeholder; check the chat template.")
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values(processor, [image])}


def answer(model: Any, processor: Any, template: Any, image: str, messages: Sequence[dict[str, Any]], *,
           max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0) -> str:
    """The reply to ``messages`` (ending with a user turn) about the image at ``image``."""
    import torch
    from xt.api import decode_reply, preserved_training_state, safe_pad_id

    from xt_llava.processor import as_llava_processor

    processor = as_llava_processor(processor, "Image chat")
    inputs = prepare_inputs(processor, template, image, messages)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    stop_ids = template.stop_token_ids(processor)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": stop_ids,
                              "pad_token_id": safe_pad_id(processor.tokenizer, model)}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with preserved_training_state(model):
        output = model.generate(**inputs, **kwargs)
    new_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    return decode_reply(processor.tokenizer, new_ids, stop_ids, tuple(template.stop_words))


def answer_image(chat_model: Any, messages: Sequence[dict[str, Any]], image: str, *, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, **_: Any) -> str:
    """``xt chat RUN --image PATH``: the core hands its loaded ``ChatModel`` (model, tokenizer, template)."""
    return answer(chat_model.model, chat_model.tokenizer, chat_model.template, image, messages,
                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
