"""``xt chat --backend lmdeploy``: answer through LMDeploy's pipeline (needs CUDA and lmdeploy)."""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xt.api import XtError

NO_CUDA = ("--backend lmdeploy needs a CUDA GPU and the lmdeploy package (every LMDeploy engine runs on CUDA), "
           "and {missing}; use --backend hf.")


def check_available() -> None:
    """Raise a one-sentence XtError unless lmdeploy imports and a CUDA device is present."""
    if importlib.util.find_spec("lmdeploy") is None:
        raise XtError(NO_CUDA.format(missing="lmdeploy is not installed (pip install lmdeploy)"))
    import torch

    if not torch.cuda.is_available():
        raise XtError(NO_CUDA.format(missing="this machine has no CUDA device"))
    try:
        import lmdeploy  # noqa: F401
    except Exception as exc:
        raise XtError(NO_CUDA.format(missing=f"importing lmdeploy failed ({type(exc).__name__}: {exc})")) from exc


def _served_folder(options: Any) -> Path:
    """An exported folder for ``options.target``: reused when already exported, else exported to a temp dir."""
    from xt_lmdeploy.export import INFO_FILE, export_lmdeploy

    target = Path(options.target)
    if (target / INFO_FILE).is_file():
        return target
    if options.adapter:
        raise XtError("--backend lmdeploy serves merged models; merge first (xt merge BASE ADAPTER --out DIR) "
                      "or pass a run directory.")
    out = Path(tempfile.mkdtemp(prefix="xt-lmdeploy-")) / "model"
    options_for_export = {"template": options.template} if options.template else {}
    return export_lmdeploy(target, out, **options_for_export)


def make_responder(options: Any) -> Callable[..., str]:
    """A responder ``respond(messages, on_text) -> reply`` backed by ``lmdeploy.pipeline``."""
    check_available()
    from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig, pipeline

    from xt_lmdeploy.export import CHAT_TEMPLATE_FILE, read_info

    folder = _served_folder(options)
    info = read_info(folder)
    engine = TurbomindEngineConfig() if info["backend"] == "turbomind" else PytorchEngineConfig()
    template_config = ChatTemplateConfig.from_json(str(folder / CHAT_TEMPLATE_FILE))
    pipe = pipeline(str(folder), backend_config=engine, chat_template_config=template_config)
    gen = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.temperature > 0,
                           temperature=options.temperature or 1.0, top_p=options.top_p,
                           stop_words=list(template_config.stop_words or []))

    def with_image(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not options.image:
            return messages
        out = [dict(m) for m in messages]
        first_user = next(i for i, m in enumerate(out) if m["role"] == "user")
        out[first_user]["content"] = [{"type": "text", "text": out[first_user]["content"]},
                                      {"type": "image_url", "image_url": {"url": str(options.image)}}]
        return out

    def respond(messages: list[dict[str, Any]], on_text: Callable[[str], None] | None = None) -> str:
        pieces = []
        for response in pipe.stream_infer([with_image(messages)], gen_config=gen):
            if response.text:
                pieces.append(response.text)
                if on_text is not None:
                    on_text(response.text)
        return "".join(pieces).strip()

    return respond
