"""The ``llava`` collator: padded text (as the core's default collator) + CLIP pixel values.

Samples hold one ``<image>`` token per image (so ``max_length`` and packing count it as one
token, as XTuner does). Here each becomes ``tokens_per_image`` copies with label -100, the
position ids are renumbered to match, and the images are loaded and preprocessed into
``pixel_values`` (one row per image, in order), which is what ``LlavaForConditionalGeneration``
takes. Text-only samples may share a batch with image samples. An image whose ``<image>`` token was
cut off by truncation is dropped with it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from xt.api import IGNORE_INDEX, XtError


def load_image(ref: str) -> Any:
    """An RGB PIL image from a path or a ``data:image/...;base64,`` URL; a clear error when unreadable."""
    from PIL import Image, UnidentifiedImageError

    from xt_llava.data import decode_data_url

    try:
        if ref.startswith("data:"):
            img = Image.open(io.BytesIO(decode_data_url(ref)))
        else:
            img = Image.open(ref)
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        shown = ref if not ref.startswith("data:") else "an inline data URL"
        raise XtError(f"Image {shown!r} could not be read ({type(exc).__name__}: {exc}); fix or remove the row "
                      f"that uses it (or pass --skip-bad-rows so rows with unreadable images are skipped).") from exc


def pixel_values(processor: Any, refs: list[str]) -> Any:
    """``(n_images, 3, H, W)`` float tensor from the processor's image processor."""
    images = [load_image(r) for r in refs]
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def expand_images(input_ids: list[int], labels: list[int], position_ids: list[int] | None, image_token_id: int,
                  tokens_per_image: int, n_images: int) -> tuple[list[int], list[int], list[int], int]:
    """Each ``<image>`` token -> ``tokens_per_image`` copies (label -100); positions renumbered per sample.

    Returns (input_ids, labels, position_ids, images kept). Placeholders beyond ``n_images`` are an
    error; images beyond the placeholders left after truncation are not kept.
    """
    positions = position_ids if position_ids is not None else list(range(len(input_ids)))
    ids_out: list[int] = []
    labels_out: list[int] = []
    starts: list[bool] = []
    seen = 0
    for tok, lab, pos in zip(input_ids, labels, positions):
        if tok == image_token_id:
            seen += 1
            if seen > n_images:
                raise XtError(f"A sample has more '<image>' tokens than images ({seen} > {n_images}); the text of a "
                              f"row contains a literal '<image>' that its dataset map did not account for.")
            ids_out.extend([tok] * tokens_per_image)
            labels_out.extend([IGNORE_INDEX] * tokens_per_image)
            starts.extend([pos == 0] + [False] * (tokens_per_image - 1))
        else:
            ids_out.append(tok)
            labels_out.append(lab)
            starts.append(pos == 0)
    new_positions: list[int] = []
    current = -1
    for start in starts:
        current = 0 if start else current + 1
        new_positions.append(current)
    return ids_out, labels_out, new_positions, seen


def make_llava_collator(tokenizer: Any = None, pad_token_id: int | None = None, pad_to_multiple_of: int | None = None,
                        *, attn_implementation: str | None = None, flatten: bool | None = None,
                        **_: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collate function for llava training; ``tokenizer`` is the llava processor of the model."""
    from xt.api import make_default_collator

    from xt_llava.processor import as_llava_processor

    processor = as_llava_processor(tokenizer, "The 'llava' collator")
    image_token_id = int(processor.tokenizer.convert_tokens_to_ids(processor.image_token))
    per_image = processor.tokens_per_image
    pad = pad_token_id if pad_token_id is not None else processor.tokenizer.pad_token_id
    text_collate = make_default_collator(pad_token_id=pad if pad is not None else 0,
                                         pad_to_multiple_of=pad_to_multiple_of, flatten=flatten,
                                         attn_implementation=attn_implementation)

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        refs: list[str] = []
        for sample in samples:
            images = list(sample.get("images") or [])
            ids, labels, positions, kept = expand_images(sample["input_ids"], sample["labels"],
                                                         sample.get("position_ids"), image_token_id, per_image,
                                                         len(images))
            refs.extend(images[:kept])
            rows.append({"input_ids": ids, "labels": labels, "position_ids": positions})
        batch = text_collate(rows)
        if refs:
            batch["pixel_values"] = pixel_values(processor, refs)
        return batch

    return collate
