"""What xt-llava registers, its conformance and the set-up checks that refuse what HF llava cannot hold."""

from __future__ import annotations

import pytest
import torch
from xt.errors import XtError


def _registry():
    from xt.plugins import get_registry

    return get_registry()


def test_conformance():
    from xt.testing import check_plugin

    report = check_plugin("xt_llava")
    assert {"llava", "llava-tiny", "clip-tiny", "clip-vit-large-336"} <= set(report.names("models"))
    assert report.names("collators") == ["llava"] and report.names("datasets") == ["llava"]


def test_registrations_and_stage_defaults():
    from xt.config import resolve_config

    registry = _registry()
    assert registry.get("models", "clip-tiny").kind == "vision-encoder"
    spec = registry.get("models", "llava-tiny")
    assert spec.kind == "multimodal" and set(spec.stages) == {"pretrain", "finetune"}
    cfg = resolve_config(None, {"model": "llava-tiny", "dataset": "llava"}, ["stage=pretrain"])
    assert cfg.method == "full" and cfg.collator == "llava" and cfg.train_patterns == ["*multi_modal_projector*"]
    cfg = resolve_config(None, {"model": "llava-tiny", "dataset": "llava", "method": "qlora"}, ["stage=finetune"])
    assert cfg.method == "qlora" and cfg.modules_to_save == ["multi_modal_projector"]
    config = spec.config()
    assert config.model_type == "llava" and config.image_seq_length == 4 and config.vision_feature_layer == -2
    big = registry.get("models", "llava-vicuna-7b").config()
    assert big.image_seq_length == 576 and big.vision_config.image_size == 336


def test_tiny_model_is_hf_llava_and_deterministic():
    from transformers import LlavaForConditionalGeneration

    spec = _registry().get("models", "llava-tiny")
    a = spec.load_model(None, dtype=torch.float32)
    b = spec.load_model(None, dtype=torch.float32)
    assert type(a) is LlavaForConditionalGeneration
    assert a.config.vision_feature_select_strategy == "default" and a.config.projector_hidden_act == "gelu"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert {"model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_2.weight"} <= set(sa)


def test_unexpressible_llm_is_refused_at_setup():
    registry = _registry()
    if "baichuan2-tiny" not in registry.names("models"):
        pytest.skip("xt-baichuan is not installed")
    llava = registry.get("models", "llava")
    with pytest.raises(XtError, match="NormHead"):
        llava.load_model(None, llm="baichuan2-tiny", vision_encoder="clip-tiny")
    with pytest.raises(XtError, match="NormHead"):
        llava.load_tokenizer(None, llm="baichuan2-tiny", vision_encoder="clip-tiny")


@pytest.mark.parametrize("args, message", [
    ({"projector_depth": 3}, "only depth 2"),
    ({"vision_feature_layer": 9}, "outside the encoder"),
    ({"vision_encoder": "llava-tiny"}, "not a vision encoder"),
    ({"projecter": "x"}, "Did you mean 'projector'"),
    ({"projector": "/nonexistent/run"}, "does not exist"),
])
def test_bad_model_args(args, message):
    kwargs = {"llm": "tiny", "vision_encoder": "clip-tiny", **args}
    with pytest.raises(XtError, match=message):
        _registry().get("models", "llava").load_model(None, dtype=torch.float32, **kwargs)


def test_collator_needs_a_llava_processor():
    from xt.tokenizers import tiny_tokenizer

    with pytest.raises(XtError, match="processor of a llava model"):
        _registry().get("collators", "llava").factory(tokenizer=tiny_tokenizer())
