"""Export a 7B-style (RoPE) Baichuan2 to the plain Llama layout that any Llama runtime loads.

``W_pack`` is split into ``q_proj`` / ``k_proj`` / ``v_proj`` (its rows are q | k | v), the NormHead
weight is normalised once into an ordinary ``lm_head`` and the config becomes a ``LlamaConfig`` with
the same RoPE base, RMSNorm eps and untied embeddings, so the logits are those of the native model.
ALiBi (13B-style) models have no Llama equivalent and are refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from xt.api import XtError

COPIED_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                "generation_config.json", "chat_template.jinja")


def _load_source(path: Path) -> tuple[Any, Path | None]:
    """The model to export and the folder its tokenizer files come from.

    ``path`` is a model folder, or an xt run directory: its ``final/`` full model, or its LoRA adapter
    merged into the base it was trained on (float32).
    """
    from xt.api import is_run_dir

    if is_run_dir(path):
        from xt.api import apply_adapter, describe_run, load_base, resolve_base

        run = describe_run(path)
        if run.adapter:
            spec, source = resolve_base(run.model, run.source)
            import torch

            base = load_base(spec, source, torch.float32)
            _refuse_alibi(base.config)
            return apply_adapter(base, run.final_dir, merge=True), run.final_dir
        path = Path(run.final_dir)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise XtError(f"'{path}' holds a LoRA adapter, not a full model; merge it first (xt merge) or pass "
                      f"the run directory.")
    if not (path / "config.json").is_file():
        raise XtError(f"'{path}' has no config.json; pass a Baichuan2 model folder or an xt run directory.")
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") != "baichuan":
        raise XtError(f"'{path}' is a {raw.get('model_type')!r} model, not Baichuan2 (model_type baichuan).")
    from xt_baichuan.auto import register
    from xt_baichuan.remote_code.configuration_baichuan import BaichuanConfig

    register()
    _refuse_alibi(BaichuanConfig.from_pretrained(path))
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM

    return BaichuanForCausalLM.from_pretrained(path, dtype="auto"), path


def _refuse_alibi(config: Any) -> None:
    if getattr(config, "position_embedding", None) != "rope":
        raise XtError("This Baichuan2 model uses ALiBi (13B style), which the Llama layout cannot express; "
                      "only RoPE (7B-style) models can be exported with baichuan-llama.")


def llama_state_dict(model: Any) -> dict[str, Any]:
    """The Llama-layout tensors of a native Baichuan2 model (new tensors; the model is not modified)."""
    import torch.nn.functional as F

    state = {k: v.detach() for k, v in model.state_dict().items()}
    hidden = model.config.hidden_size
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith("self_attn.W_pack.weight"):
            prefix = key[: -len("W_pack.weight")]
            q, k, v = tensor.split(hidden, dim=0)
            out[prefix + "q_proj.weight"] = q.clone().contiguous()
            out[prefix + "k_proj.weight"] = k.clone().contiguous()
            out[prefix + "v_proj.weight"] = v.clone().contiguous()
        elif key == "lm_head.weight":
            out[key] = F.normalize(tensor.float(), dim=1).to(tensor.dtype).contiguous()
        else:
            out[key] = tensor.clone().contiguous()
    return out


def llama_config(config: Any) -> Any:
    """The ``LlamaConfig`` equivalent of a RoPE Baichuan2 config."""
    from transformers import LlamaConfig

    _refuse_alibi(config)
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, hidden_act=config.hidden_act,
        max_position_embeddings=int(getattr(config, "max_position_embeddings", config.model_max_length)),
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_base},
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        architectures=["LlamaForCausalLM"],
    )


def export_llama_layout(model_or_dir: Any, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a ``LlamaForCausalLM`` folder (config, safetensors, tokenizer files) equal in logits to the
    Baichuan2 RoPE model given as a loaded model, a model folder or an xt run directory.

    The folder is written to a temporary sibling and renamed into place, so a failure leaves nothing
    behind; a non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    from xt.api import check_output_dir, staged_output

    check_output_dir(out_dir, overwrite)
    if isinstance(model_or_dir, (str, os.PathLike)):
        model, source_dir = _load_source(Path(model_or_dir))
    else:
        model, source_dir = model_or_dir, None
        if hasattr(model, "peft_config"):
            raise XtError("This is a PEFT-wrapped model; call merge_and_unload() (or xt merge) before exporting.")
    _refuse_alibi(model.config)
    from huggingface_hub import save_torch_state_dict

    config = llama_config(model.config)
    tensors = llama_state_dict(model)
    config.dtype = next(iter(tensors.values())).dtype
    with staged_output(out_dir, overwrite) as tmp:
        config.save_pretrained(tmp)
        save_torch_state_dict(tensors, tmp, max_shard_size="5GB")
        if source_dir is not None:
            for name in COPIED_FILES:
                if (source_dir / name).is_file():
                    shutil.copy2(source_dir / name, tmp / name)
        if not (tmp / "generation_config.json").is_file() and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
    return Path(out_dir)


def export_for_xt(run_dir_or_model_dir: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> Path:
    """``xt export RUN --to baichuan-llama``: a run directory (full-model final/) or a model folder."""
    unknown = set(options) - {"overwrite"}
    if unknown:
        raise XtError(f"Unknown option(s) for baichuan-llama: {', '.join(sorted(unknown))}; only 'overwrite' exists.")
    return export_llama_layout(run_dir_or_model_dir, out_dir, overwrite=bool(options.get("overwrite", False)))
