"""``xt export RUN --to lmdeploy``: a merged model laid out for LMDeploy plus its chat template.

The output folder is a Hugging Face model folder (both LMDeploy engines load those directly) with:

- ``config.json`` + ``*.safetensors`` + tokenizer files + ``generation_config.json``
  (a Baichuan2-7B model is rewritten in the Llama layout, which TurboMind serves);
- ``chat_template.json``: LMDeploy's ``ChatTemplateConfig`` fields rendering the training template;
- ``xt_lmdeploy.json``: the chosen engine, why, and the command that serves the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xt.api import XtError

from xt_lmdeploy.routing import Route, SupportTables, route, support_tables

CHAT_TEMPLATE_FILE = "chat_template.json"
INFO_FILE = "xt_lmdeploy.json"
OPTIONS = ("dtype", "overwrite", "table", "template")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# --------------------------------------------------------------------------- chat template


def _pieces(part: Any) -> list[Any]:
    from xt.api import SpecialToken

    return [part] if isinstance(part, str) and not isinstance(part, SpecialToken) else list(part)


def _text(pieces: list[Any], tokenizer: Any) -> str:
    """Template pieces as text: BOS / EOS as the tokenizer's token strings, ids as their tokens."""
    from xt.api import SpecialToken

    out = []
    for piece in pieces:
        if isinstance(piece, SpecialToken):
            token = tokenizer.bos_token if piece == "bos" else tokenizer.eos_token
            out.append(token or "")
        elif isinstance(piece, int):
            out.append(tokenizer.convert_ids_to_tokens(piece))
        else:
            out.append(piece)
    return "".join(out)


def _split(part: Any, key: str, tokenizer: Any, what: str, template_name: str) -> tuple[str, str]:
    """A part as (text before ``{key}``, text after it)."""
    pieces = _pieces(part)
    for i, piece in enumerate(pieces):
        if isinstance(piece, str) and "{" + key + "}" in piece:
            before, after = piece.split("{" + key + "}", 1)
            return _text([*pieces[:i], before], tokenizer), _text([after, *pieces[i + 1:]], tokenizer)
    raise XtError(f"Template '{template_name}': the {what} part has no '{{{key}}}', so it cannot be written as an "
                  f"LMDeploy chat template.")


def chat_template_config(template: Any, tokenizer: Any, model_name: str | None = None) -> dict[str, Any]:
    """LMDeploy ``ChatTemplateConfig`` fields that frame conversations as ``template`` does in xt.

    LMDeploy's tokenizer adds BOS itself; any other fixed text before the first turn (a template
    ``prefix`` beyond BOS) has no ChatTemplateConfig field and is refused. A template without a
    ``default_system`` renders conversations without a system message exactly; an explicit system
    message then goes out without the template's system framing (LMDeploy has no "no system" state).
    """
    from xt.api import SpecialToken

    prefix = [p for p in _pieces(template.prefix) if not (isinstance(p, SpecialToken) and p == "bos")]
    if _text(prefix, tokenizer):
        raise XtError(f"Template '{template.name}' starts every prompt with fixed text ({_text(prefix, tokenizer)!r}), "
                      f"which LMDeploy's ChatTemplateConfig cannot express; export with --to hf instead.")
    system, eosys = _split(template.system, "system", tokenizer, "system", template.name)
    user, eoh = _split(template.user, "content", tokenizer, "user", template.name)
    assistant, after_reply = _split(template.assistant, "content", tokenizer, "assistant", template.name)
    eoa = after_reply + _text(_pieces(template.assistant_end), tokenizer)
    stop_words = [w for w in template.stop_words if w]
    end_text = _text(_pieces(template.assistant_end), tokenizer)
    for word in (end_text, tokenizer.eos_token):
        if word and word not in stop_words:
            stop_words.append(word)
    if template.default_system is None:
        # LMDeploy always opens a conversation without a system message with system + meta_instruction +
        # eosys (a null meta_instruction falls back to ''), so the framing must be empty for the prompt to
        # match training; an explicit system message is then sent without the template's system framing.
        system = eosys = ""
    return {
        "model_name": model_name or f"xt-{template.name}",
        "system": system,
        "meta_instruction": template.default_system or "",
        "eosys": eosys,
        "user": user,
        "eoh": eoh,
        "assistant": assistant,
        "eoa": eoa,
        "separator": _text(_pieces(template.turn_sep), tokenizer),
        "capability": "chat",
        "stop_words": stop_words,
    }


# --------------------------------------------------------------------------- export


def _describe(source: Path) -> tuple[Any, Path | None, dict[str, Any] | None]:
    """(RunModel or None, a full-model folder or None, a config dict known before merging or None)."""
    from xt.api import describe_run, is_run_dir

    if is_run_dir(source):
        run = describe_run(source)
        if not run.adapter:
            return run, run.final_dir, _read_config(run.final_dir)
        return run, None, _base_config(run)
    if (source / "config.json").is_file():
        return None, source, _read_config(source)
    if not source.exists():
        raise XtError(f"'{source}' does not exist; pass an xt run directory or a model folder.")
    raise XtError(f"'{source}' is neither an xt run directory (no run.json) nor a model folder (no config.json).")


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _base_config(run: Any) -> dict[str, Any] | None:
    """The base model's config of an adapter run, when it is known without loading weights."""
    for folder in (run.source, run.model):
        if folder and Path(folder).is_dir():
            return _read_config(Path(folder))
    try:
        from xt.api import get_registry

        spec = get_registry().resolve_model(run.model)
        return spec.config().to_dict() if spec.config is not None else None
    except Exception:
        return None


def _copy_model_files(src: Path, dst: Path, skip_existing: bool = False) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if skip_existing and target.exists():
            continue
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)


def _to_llama_layout(hf_dir: Path, out: Path) -> None:
    try:
        from xt_baichuan.export import export_llama_layout
    except ImportError as exc:
        raise XtError("Serving Baichuan2-7B with LMDeploy needs its Llama-layout export from the xt-baichuan "
                      "plugin; pip install xt-baichuan (or export with --to hf).") from exc
    export_llama_layout(hf_dir, out, overwrite=True)
    for item in hf_dir.iterdir():  # tokenizer, template and other non-weight files the conversion left out
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and item.name != "config.json" \
                and not item.name.endswith(".index.json") and not (out / item.name).exists():
            shutil.copy2(item, out / item.name)


def _load_tokenizer(folder: Path, spec: Any) -> Any:
    from xt.api import load_tokenizer_for

    if spec is None:
        from xt.api import get_registry

        spec = get_registry().get("models", "hf")
    return load_tokenizer_for(spec, str(folder), prefer=folder)


def export_lmdeploy(run_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> Path:
    """Write ``out_dir`` for LMDeploy from a finished run (or a full model folder).

    Options: ``dtype`` (bf16 | fp16 | fp32 for merged adapters, default bf16), ``overwrite``,
    ``table`` (auto | builtin | lmdeploy: which support table decides) and ``template``.
    """
    from xt.api import as_bool, check_output_dir, merge_adapter, resolve_base, staged_output, template_for

    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise XtError(f"Unknown option(s) for exporter 'lmdeploy': {', '.join(sorted(unknown))}; known: "
                      f"{', '.join(OPTIONS)}.")
    overwrite = as_bool(options.get("overwrite", False), "overwrite")
    dtype = str(options.get("dtype", "bf16"))
    tables = support_tables(options.get("table"))
    source = Path(run_dir)
    run, model_dir, early_config = _describe(source)
    if early_config is not None:
        route(early_config, tables)  # refuse before any weights are loaded or written
    check_output_dir(out_dir, overwrite)
    out = Path(out_dir)
    spec = resolve_base(run.model, run.source)[0] if run is not None else None
    template_name = options.get("template") or (run.template if run is not None else None)

    with staged_output(out, overwrite) as staged:
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=staged.parent))
        try:
            hf_dir = scratch / "hf"
            if run is not None and run.adapter:
                merge_adapter(run.model, run.final_dir, hf_dir, dtype=dtype, template=run.template, source=run.source,
                              model_args=run.model_args)
            else:
                shutil.copytree(model_dir, hf_dir)
            config = _read_config(hf_dir) or {}
            decision = route(config, tables)
            if decision.convert == "baichuan-llama":
                _to_llama_layout(hf_dir, staged)
            else:
                _copy_model_files(hf_dir, staged)
            template = template_for(template_name, (staged,), spec)
            tokenizer = _load_tokenizer(staged, spec)
            fields = chat_template_config(template, tokenizer)
            (staged / CHAT_TEMPLATE_FILE).write_text(json.dumps(fields, indent=2, ensure_ascii=False))
            _write_info(staged, out, decision, tables, template.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def _write_info(folder: Path, out: Path, decision: Route, tables: SupportTables, template: str) -> None:
    info = {
        "backend": decision.backend,
        "architecture": decision.architecture,
        "served_architecture": decision.served_architecture,
        "conversion": decision.convert,
        "decided_by": f"{tables.source} table (LMDeploy {tables.version})",
        "template": template,
        "serve": f"lmdeploy serve api_server {out} --backend {decision.backend} "
                 f"--chat-template {out / CHAT_TEMPLATE_FILE}",
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))


def read_info(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``xt_lmdeploy.json`` of an exported folder."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise XtError(f"'{folder}' was not written by 'xt export --to lmdeploy' (no {INFO_FILE}).")
    return json.loads(path.read_text())
