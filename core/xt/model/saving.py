"""Write the result of a run (``RUN/final``) so plain transformers / peft load it without xt.

The folder holds the adapter (PEFT layout) or the full model, always as safetensors, plus the
tokenizer with the Jinja ``chat_template`` the compiled template renders (``tokenizer.apply_chat_template``
gives the training ids), ``generation_config.json``
whose ``eos_token_id`` lists the template's stop ids, and ``xt_template.json`` (the TemplateSpec).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xt.errors import XtError
from xt.specs import SpecialToken, TemplateSpec

TEMPLATE_FILE = "xt_template.json"


def template_to_json(template: TemplateSpec) -> dict[str, Any]:
    """TemplateSpec fields as JSON (BOS / EOS written as ``{"special": "bos"}``)."""
    def encode(value: Any) -> Any:
        if isinstance(value, SpecialToken):
            return {"special": str(value)}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value

    data = {k: encode(v) for k, v in asdict(template).items()}
    for key in ("prefix", "system", "user", "assistant", "assistant_end", "turn_sep", "final_sep", "stop_words", "aliases"):
        data[key] = encode(getattr(template, key))
    return data


def template_from_json(data: dict[str, Any]) -> TemplateSpec:
    """Inverse of :func:`template_to_json`."""
    from xt.specs import BOS, EOS

    def decode(value: Any) -> Any:
        if isinstance(value, dict) and "special" in value:
            return BOS if value["special"] == "bos" else EOS
        if isinstance(value, list):
            return tuple(decode(v) for v in value)
        return value

    known = set(TemplateSpec.__dataclass_fields__)
    return TemplateSpec(**{k: decode(v) for k, v in data.items() if k in known})


def write_tokenizer_files(out: Path, tokenizer: Any, template: TemplateSpec, base_generation_config: Any = None) -> None:
    """Tokenizer (with chat template), generation_config.json and xt_template.json."""
    from transformers import GenerationConfig

    template = template.for_tokenizer(tokenizer)
    try:
        jinja = template.compile(tokenizer).jinja()
    except XtError as exc:  # e.g. literal ids that are not special tokens here: the result stays usable
        print(f"warning: no chat_template saved: {exc}", file=sys.stderr)
        jinja = None
    own = tokenizer.chat_template  # the caller's tokenizer keeps its own template
    tokenizer.chat_template = jinja
    try:
        tokenizer.save_pretrained(str(out))
    finally:
        tokenizer.chat_template = own
    stop_ids = template.stop_token_ids(tokenizer)
    gen = GenerationConfig.from_dict(base_generation_config.to_dict()) if base_generation_config is not None \
        else GenerationConfig()
    gen.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = int(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = int(tokenizer.bos_token_id)
    gen.save_pretrained(str(out))
    (out / TEMPLATE_FILE).write_text(json.dumps(template_to_json(template), indent=2, ensure_ascii=False))


def _gathered(model: Any, zero3: bool, only_trainable: bool) -> Any:
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad or not only_trainable]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def preset_base_note(name: str) -> str | None:
    """How to rebuild the base of an adapter whose base is an xt preset built in memory, else None."""
    from xt.errors import XtError
    from xt.plugins import get_registry

    if Path(os.path.expanduser(name)).exists():
        return None
    try:
        spec = get_registry().resolve_model(name)
    except XtError:
        return None
    if spec.source is not None:
        return None
    return (f"The base model `{name}` is an xt preset built in memory (registered by the plugin "
            f"`{spec.plugin or 'xt-core'}`), not a download or a folder. Rebuild it with xt installed: "
            f"`get_registry().resolve_model('{name}').load_model(None)` (`from xt.plugins import get_registry`); "
            f"or write base and adapter merged into one folder that plain transformers loads: "
            f"`xt export RUN --to hf --out DIR`.")


def _adapter_base_note(model: Any) -> str | None:
    config = getattr(model, "peft_config", {}).get("default")
    return preset_base_note(str(getattr(config, "base_model_name_or_path", "") or ""))


def _append_readme(folder: Path, note: str) -> None:
    """Add a "Base model" section with ``note`` to the adapter's README.md (PEFT's model card)."""
    readme = folder / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    readme.write_text(text.rstrip() + ("\n\n" if text else "") + "## Base model\n\n" + note + "\n")


def save_final(model: Any, tokenizer: Any, template: TemplateSpec, out_dir: str | os.PathLike, *,
               adapter: bool, zero3: bool = False, rank: int = 0, objective: Any = None, context: Any = None) -> Path:
    """Save the trained model as a Hugging Face folder; every rank calls it (ZeRO-3 gathers collectively).

    Written to ``out_dir + '.tmp'`` first and renamed, so a crash never leaves a half-written result.
    An objective with its own ``save`` (e.g. a reward model) writes the weights instead, with every
    parameter gathered; the tokenizer files are written either way.
    """
    from xt.errors import plugin_call

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    own_save = getattr(objective, "save", None)
    base_note = _adapter_base_note(model) if adapter and rank == 0 and own_save is None else None
    with _gathered(model, zero3, only_trainable=adapter and own_save is None):
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            if own_save is not None:
                with plugin_call(objective, "save"):
                    own_save(model, tokenizer, template, tmp, adapter=adapter, context=context)
            elif adapter:
                # a preset base has no config to look up (PEFT would try the hub): embeddings unchanged
                no_lookup = {"save_embedding_layers": False} if base_note else {}
                model.save_pretrained(str(tmp), safe_serialization=True, **no_lookup)
            else:
                state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
                use_cache = getattr(model.config, "use_cache", None)
                model.config.use_cache = True  # training turns the cache off; inference wants it
                try:
                    model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
                finally:
                    model.config.use_cache = use_cache
    if rank == 0:
        base = model.get_base_model() if adapter and hasattr(model, "get_base_model") else model
        write_tokenizer_files(tmp, tokenizer, template, getattr(base, "generation_config", None))
        if base_note:
            _append_readme(tmp, base_note)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out
