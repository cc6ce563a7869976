"""LLaVA data: rows -> conversations with ``<image>`` placeholders and resolved image files.

Two row formats are accepted:

* LLaVA json: ``{"id", "image": "name.jpg", "conversations": [{"from": "human"|"gpt", "value"}]}``.
  ``<image>`` may stand anywhere in the first human turn; it is moved to the start
  (``<image>\\n`` + text) as LLaVA does, or added there when missing.
* OpenAI-style messages: ``{"messages": [{"role", "content": str | [parts]}]}`` with parts
  ``{"type": "text", "text"}`` and ``{"type": "image_url", "image_url": {"url"}}`` (or
  ``{"type": "image", "image" | "path" | "url"}``). Placeholders in the text (``<image>`` or
  ``<IMG_CONTEXT>``) mark where the images go; without any, each image goes before the text.

Image paths are resolved when the row is mapped: absolute paths as they are, relative ones under
the image folder (``image_folder`` of :func:`map_llava_row`; the registered ``llava`` dataset takes
the run context's ``image_folder``, i.e. ``--image-folder``), trying the path and then its file name alone.
``data:image/...;base64,`` URLs are accepted inline. A missing, unreadable or remote image, or a
placeholder count that does not match the images, raises :class:`~xt.specs.RowError` naming the
row id, so the pipeline fails on it or, with ``skip_bad_rows``, skips and counts it.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from functools import lru_cache
from typing import Any

from xt.api import RowError, content_parts

IMAGE_TOKEN = "<image>"
PLACEHOLDER_RE = re.compile(r"<image>|<IMG_CONTEXT>")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _row_name(row: dict[str, Any]) -> str:
    return f"row id {row['id']!r}" if "id" in row else "row (no id)"


# --------------------------------------------------------------------------- images


def image_problem(source: Any) -> str | None:
    """None when ``source`` (a path or a binary file) decodes as a whole image, else why not.

    JPEGs are decoded in draft mode (at 1/8 scale, reading every byte), so a truncated or corrupt file
    is found when rows are checked, at a fraction of a full decode. PIL's global permission to load
    truncated files (lmdeploy grants it on import) is withheld meanwhile.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    allowed, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(source) as img:
            img.draft("RGB", (1, 1))  # JPEG only; other formats decode in full
            img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    return None


@lru_cache(maxsize=4096)
def _check_image_file(path: str) -> str | None:
    """:func:`image_problem` of a file (cached: rows often share images)."""
    return image_problem(path)


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL."""
    head, _, payload = url.partition(",")
    if not head.startswith("data:image/") or ";base64" not in head:
        raise ValueError("only base64 data:image/... URLs are supported")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64 payload ({exc})") from exc


def resolve_image(ref: Any, image_folder: str | None, where: str) -> str:
    """A row's image reference -> an absolute path (or the data URL), checked to open as an image."""
    if not isinstance(ref, str) or not ref.strip():
        raise RowError(f"{where}: an image reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref.startswith("data:"):
        try:
            problem = image_problem(io.BytesIO(decode_data_url(ref)))
        except ValueError as exc:
            problem = str(exc)
        if problem:
            raise RowError(f"{where}: the inline data URL image is unreadable ({problem})")
        return ref
    if ref.startswith(("http://", "https://")):
        raise RowError(f"{where}: image '{ref}' is a remote URL; xt does not download images, so download them and "
                       f"point --image-folder at them")
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    ref = os.path.expanduser(ref)
    if os.path.isabs(ref):
        candidates = [ref]
    elif image_folder:
        folder = os.path.expanduser(image_folder)
        candidates = [os.path.join(folder, ref), os.path.join(folder, os.path.basename(ref))]
    else:
        candidates = [os.path.abspath(ref)]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        where_looked = f"under image folder '{image_folder}'" if image_folder and not os.path.isabs(ref) \
            else "(no image folder set)" if not os.path.isabs(ref) else ""
        raise RowError(f"{where}: image '{ref}' not found {where_looked}".rstrip()
                       + "; pass the image folder with --image-folder DIR or fix the row")
    problem = _check_image_file(os.path.abspath(path))
    if problem:
        raise RowError(f"{where}: image '{path}' is not a readable image ({problem})")
    return os.path.abspath(path)


# --------------------------------------------------------------------------- rows


def _as_list(value: Any) -> list[Any]:
    """A row's image field (absent, one path or a list) as a list."""
    if value in (None, "", []):
        return []
    return value if isinstance(value, list) else [value]


def _normalise_first_turn(text: str, n_images: int) -> str:
    """LLaVA: the first human turn's ``<image>`` placeholders moved to the start, one line each."""
    rest = PLACEHOLDER_RE.sub("", text).strip()
    return (IMAGE_TOKEN + "\n") * n_images + rest


def _llava_conversation(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[Any]]:
    raw = row["conversations"]
    if not isinstance(raw, list) or not raw:
        raise RowError(f"{where}: 'conversations' must be a non-empty list")
    images = _as_list(row.get("image", row.get("images")))
    messages = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError(f"{where}: turn {i} needs 'from' and 'value'")
        role = _ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise RowError(f"{where}: turn {i} has unknown speaker {turn['from']!r} (expected human or gpt)")
        if not isinstance(turn["value"], str):
            raise RowError(f"{where}: turn {i} value must be a string")
        messages.append({"role": role, "content": turn["value"]})
    counts = [len(PLACEHOLDER_RE.findall(m["content"])) for m in messages]
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    for i, m in enumerate(messages):
        if counts[i] and m["role"] != "user":
            raise RowError(f"{where}: turn {i} ({m['role']}) contains '{IMAGE_TOKEN}'; images belong to human turns")
    total = sum(counts)
    if not images:
        if total:
            raise RowError(f"{where}: the text has {total} '{IMAGE_TOKEN}' placeholder(s) but the row has no image")
        return messages, []
    if first_user is None:
        raise RowError(f"{where}: the row has an image but no human turn to put it in")
    if len(images) == 1:
        if total > 1:
            raise RowError(f"{where}: the text has {total} '{IMAGE_TOKEN}' placeholders for 1 image; keep one")
        if total == 1 and counts[first_user] != 1:
            raise RowError(f"{where}: '{IMAGE_TOKEN}' must be in the first human turn")
        messages[first_user]["content"] = _normalise_first_turn(messages[first_user]["content"], 1)
    elif total == 0:
        messages[first_user]["content"] = _normalise_first_turn(messages[first_user]["content"], len(images))
    elif total != len(images):
        raise RowError(f"{where}: the text has {total} '{IMAGE_TOKEN}' placeholders for {len(images)} images")
    else:
        for m in messages:
            m["content"] = PLACEHOLDER_RE.sub(IMAGE_TOKEN, m["content"])
    return messages, images


def _image_ref(part: dict[str, Any], where: str) -> Any:
    if part["type"] == "image_url":
        value = part.get("image_url")
        return value.get("url") if isinstance(value, dict) else value
    for key in ("image", "path", "url", "image_url"):
        if part.get(key):
            value = part[key]
            return value.get("url") if isinstance(value, dict) else value
    raise RowError(f"{where}: an image part needs 'image', 'path' or 'url'")


def _openai_conversation(row: dict[str, Any], where: str) -> tuple[list[dict[str, str]], list[Any]]:
    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        raise RowError(f"{where}: 'messages' must be a non-empty list")
    row_images = _as_list(row.get("images", row.get("image")))
    messages: list[dict[str, str]] = []
    images: list[Any] = []
    placeholders_only = 0  # placeholders whose images come from the row-level 'images' list
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f"{where}: message {i} needs 'role' and 'content'")
        role = _ROLES.get(str(message["role"]).lower())
        if role is None:
            raise RowError(f"{where}: message {i} has unknown role {message['role']!r}")
        content = message["content"]
        if isinstance(content, str):
            found = len(PLACEHOLDER_RE.findall(content))
            if found and role != "user":
                raise RowError(f"{where}: message {i} ({role}) contains '{IMAGE_TOKEN}'; images belong to user turns")
            placeholders_only += found
            messages.append({"role": role, "content": PLACEHOLDER_RE.sub(IMAGE_TOKEN, content)})
            continue
        if not isinstance(content, list):
            raise RowError(f"{where}: message {i} content must be a string or a list of parts")
        parts = content_parts(content, f"{where}: message {i}")
        pieces = [None if isinstance(p, dict) else p for p in parts]  # None marks an image part's position
        refs = [_image_ref(p, f"{where}: message {i}") for p in parts if isinstance(p, dict)]
        if refs and role != "user":
            raise RowError(f"{where}: message {i} ({role}) has an image part; images belong to user turns")
        text = "".join(p for p in pieces if p is not None)
        found = len(PLACEHOLDER_RE.findall(text))
        if found == 0:
            text = "".join(IMAGE_TOKEN + "\n" if p is None else p for p in pieces)
        elif found != len(refs):
            raise RowError(f"{where}: message {i} has {len(refs)} image part(s) but {found} placeholder(s) in its text")
        else:
            text = PLACEHOLDER_RE.sub(IMAGE_TOKEN, text)
        images.extend(refs)
        messages.append({"role": role, "content": text})
    if placeholders_only:
        if images:
            raise RowError(f"{where}: mixes image parts with bare '{IMAGE_TOKEN}' placeholders; use one style")
        if placeholders_only != len(row_images):
            raise RowError(f"{where}: the text has {placeholders_only} '{IMAGE_TOKEN}' placeholder(s) for "
                           f"{len(row_images)} image(s)")
        images = row_images
    elif row_images and not images:
        raise RowError(f"{where}: the row lists {len(row_images)} image(s) but no message has a placeholder or image part")
    return messages, images


def map_llava_row(row: dict[str, Any], image_folder: str | None = None, check_images: bool = True) -> dict[str, Any]:
    """One LLaVA json / OpenAI-style row -> ``{"messages", "images"?}`` with resolved image paths."""
    where = _row_name(row)
    if "conversations" in row:
        messages, refs = _llava_conversation(row, where)
    elif "messages" in row:
        messages, refs = _openai_conversation(row, where)
    else:
        raise RowError(f"{where}: has neither 'conversations' (LLaVA json) nor 'messages' (OpenAI style)")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RowError(f"{where}: no assistant reply to learn from")
    conversation: dict[str, Any] = {"messages": messages}
    if refs:
        images = [resolve_image(ref, image_folder, where) if check_images else ref for ref in refs]
        conversation["images"] = images
    return conversation


def llava_dataset(name: str = "llava-files", data_files: Any = (), image_folder: str | None = None,
                  **fields: Any) -> Any:
    """A ``DatasetSpec`` for LLaVA json / OpenAI-style files with images under ``image_folder``.

    Register it from your own plugin, or pass it to ``xt.data.build_dataset`` directly.
    """
    from functools import partial

    from xt.api import DatasetSpec

    files = [data_files] if isinstance(data_files, str) else list(data_files)
    return DatasetSpec(name=name, map_row=partial(map_llava_row, image_folder=image_folder), data_files=files,
                       sample_rows=SAMPLE_ROWS, **fields)


# A 2x2 red PNG, so the sample rows map offline without any image file.
_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")
SAMPLE_IMAGE = "data:image/png;base64," + _PNG
SAMPLE_ROWS = [
    {"id": "sample-llava", "image": SAMPLE_IMAGE,
     "conversations": [{"from": "human", "value": "What colour is the picture?\n<image>"},
                       {"from": "gpt", "value": "It is red."},
                       {"from": "human", "value": "Is it large?"},
                       {"from": "gpt", "value": "No, it is tiny."}]},
    {"id": "sample-openai",
     "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": SAMPLE_IMAGE}},
                                               {"type": "text", "text": "<IMG_CONTEXT>\nDescribe it."}]},
                  {"role": "assistant", "content": "A red square."}]},
    {"id": "sample-text", "conversations": [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]},
]
