"""The processor a llava model's ``load_tokenizer`` returns: a ``LlavaProcessor`` that is also its tokenizer.

xt's data pipeline, templates and generation use the object ``load_tokenizer`` returns as a
tokenizer (``encode``, ``bos_token_id``, the fast backend ...); the llava collator and chat need
the image processor and how many tokens one image becomes. :class:`LlavaTextProcessor` is both: a
transformers ``LlavaProcessor`` whose unknown attributes are those of its tokenizer. Saving it
writes a plain ``LlavaProcessor`` (tokenizer with the ``<image>`` token, CLIP image processor,
``patch_size``, ``num_additional_image_tokens``, ``vision_feature_select_strategy``, a chat template
that accepts image parts), so transformers' ``AutoProcessor`` loads it without xt.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import LlavaProcessor
from xt.api import XtError

IMAGE_TOKEN = "<image>"
_MM_MARK = "{#- xt-llava: content may be a string or a list of text / image parts -#}"
#: Jinja for a message's content: a string as is, a list of parts as texts with ``<image>\n`` per image part.
_CONTENT_EXPR = ("(message['content'] if message['content'] is string else "
                 "(message['content'] | map(attribute='text', default='" + IMAGE_TOKEN + "\\n') | join))")


def multimodal_chat_template(template: str | None) -> str | None:
    """xt's Jinja chat template, made to accept OpenAI-style content lists with image parts."""
    if not template or _MM_MARK in template:
        return template
    return _MM_MARK + template.replace("message['content']", _CONTENT_EXPR)


class LlavaTextProcessor(LlavaProcessor):
    """A ``LlavaProcessor`` that stands in for its tokenizer wherever xt expects one."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("tokenizer", "image_processor"):
            raise AttributeError(name)
        tokenizer = self.__dict__.get("tokenizer")
        if tokenizer is None:
            raise AttributeError(name)
        return getattr(tokenizer, name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        """Text alone is tokenized as the tokenizer does (xt's fallback path); with images, as LlavaProcessor."""
        if images is None and text is not None:
            return self.tokenizer(text, **kwargs)
        return super().__call__(images=images, text=text, **kwargs)

    @property
    def tokens_per_image(self) -> int:
        """How many ``<image>`` tokens one image expands to (576 for CLIP ViT-L/14 at 336 px)."""
        crop = self.image_processor.crop_size or {}
        height = crop.get("height") or crop.get("shortest_edge")
        width = crop.get("width") or crop.get("shortest_edge")
        n = (int(height) // int(self.patch_size)) * (int(width) // int(self.patch_size))
        n += int(self.num_additional_image_tokens)
        return n - 1 if self.vision_feature_select_strategy == "default" else n

    def as_hf(self) -> LlavaProcessor:
        """The plain transformers ``LlavaProcessor`` this one saves as."""
        return LlavaProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer,
                              patch_size=self.patch_size, num_additional_image_tokens=self.num_additional_image_tokens,
                              vision_feature_select_strategy=self.vision_feature_select_strategy,
                              image_token=self.image_token,
                              chat_template=multimodal_chat_template(self.chat_template))

    def save_pretrained(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> Any:
        """Write the HF llava processor files (tokenizer, preprocessor / processor config, chat template)."""
        return self.as_hf().save_pretrained(str(save_directory), push_to_hub=push_to_hub, **kwargs)


def add_image_token(tokenizer: Any) -> int:
    """Add ``<image>`` as a special token when missing; its id. A pad token is chosen when there is none."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def make_processor(tokenizer: Any, image_processor: Any, patch_size: int, *, chat_template: str | None = None,
                   vision_feature_select_strategy: str = "default") -> LlavaTextProcessor:
    """Tokenizer (``<image>`` added) + image processor -> the processor a llava model trains and chats with."""
    add_image_token(tokenizer)
    return LlavaTextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=int(patch_size),
                              vision_feature_select_strategy=vision_feature_select_strategy,
                              num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
                              chat_template=chat_template)


def has_processor_files(folder: Any) -> bool:
    if folder is None or not os.path.isdir(os.path.expanduser(str(folder))):
        return False
    folder = os.path.expanduser(str(folder))
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("processor_config.json", "preprocessor_config.json"))


def load_processor(source: Any) -> LlavaTextProcessor:
    """A saved HF llava processor (folder or hub id) as a :class:`LlavaTextProcessor`."""
    from transformers import AutoProcessor

    path = os.path.expanduser(str(source)) if os.path.isdir(os.path.expanduser(str(source))) else str(source)
    try:
        hf = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise XtError(f"Could not load a llava processor from '{source}': {str(exc).splitlines()[0]}. Pass a folder "
                      f"saved by xt or transformers (processor_config.json + tokenizer files).") from exc
    if not hasattr(hf, "image_processor") or not hasattr(hf, "tokenizer"):
        raise XtError(f"'{source}' holds a {type(hf).__name__}, not a llava processor (image processor + tokenizer).")
    tokenizer = hf.tokenizer
    add_image_token(tokenizer)
    return LlavaTextProcessor(image_processor=hf.image_processor, tokenizer=tokenizer,
                              patch_size=int(getattr(hf, "patch_size", None) or 14),
                              vision_feature_select_strategy=getattr(hf, "vision_feature_select_strategy", None)
                              or "default",
                              num_additional_image_tokens=int(getattr(hf, "num_additional_image_tokens", 1)),
                              image_token=IMAGE_TOKEN, chat_template=getattr(hf, "chat_template", None))


def as_llava_processor(tokenizer: Any, who: str) -> LlavaTextProcessor:
    """``tokenizer`` when it is a llava processor; a clear error otherwise."""
    if isinstance(tokenizer, LlavaTextProcessor):
        return tokenizer
    if isinstance(tokenizer, LlavaProcessor):
        converted = LlavaTextProcessor(image_processor=tokenizer.image_processor, tokenizer=tokenizer.tokenizer,
                                       patch_size=tokenizer.patch_size,
                                       vision_feature_select_strategy=tokenizer.vision_feature_select_strategy,
                                       num_additional_image_tokens=tokenizer.num_additional_image_tokens,
                                       image_token=tokenizer.image_token, chat_template=tokenizer.chat_template)
        return converted
    raise XtError(f"{who} needs the processor of a llava model (what its load_tokenizer returns), got "
                  f"{type(tokenizer).__name__}; train or chat with a multimodal model such as 'llava-tiny'.")
