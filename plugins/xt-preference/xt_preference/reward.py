"""The reward model: a scalar head on the causal LM, saved as a sequence-classification model.

:func:`add_score_head` gives the causal LM a ``score`` Linear(hidden, 1, bias=False), trainable also
when the rest is a frozen LoRA/QLoRA base. :func:`save_reward_model` writes a folder that plain
transformers loads with ``AutoModelForSequenceClassification`` (``num_labels=1``, the family's
``...ForSequenceClassification`` in ``architectures``, the run's ``pad_token_id``; LoRA merged): its
logit on a right-padded sequence is the reward the training computed at that sequence's last token.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from xt.api import XtError

from xt_preference.objectives import SCORE, unwrapped


def sequence_classification_class(config: Any) -> Any:
    """The transformers ``...ForSequenceClassification`` class of this model family, or a clear error."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise XtError(f"the 'reward' objective saves a sequence-classification model, and transformers has none "
                      f"for model type '{config.model_type}'; pick a model whose family has one (Llama, Qwen2, "
                      f"Mistral, ...).")
    return AutoModelForSequenceClassification


def add_score_head(model: Any, context: Any) -> None:
    """``prepare_model`` of ``reward``: attach the trainable ``score`` head (normal init, the config's
    ``initializer_range``) to the causal LM, in the dtype and on the device of its embeddings."""
    import torch

    causal_lm = unwrapped(model)
    sequence_classification_class(causal_lm.config)
    embeddings = causal_lm.get_input_embeddings()
    weight = embeddings.weight
    head = torch.nn.Linear(embeddings.embedding_dim, 1, bias=False, device=weight.device, dtype=weight.dtype)
    std = float(getattr(causal_lm.config, "initializer_range", 0.02))
    with torch.no_grad():
        head.weight.normal_(0.0, std)
    head.weight.requires_grad_(True)
    setattr(causal_lm, SCORE, head)


def _merged(model: Any, adapter: bool) -> Any:
    """The causal LM with any LoRA adapter merged into its weights (the head stays attached)."""
    if adapter and hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return unwrapped(model)


def sequence_classifier(model: Any, *, adapter: bool, pad_token_id: int) -> Any:
    """A ``...ForSequenceClassification`` model holding the trained backbone and head (a copy)."""
    causal_lm = _merged(model, adapter)
    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.pad_token_id = int(pad_token_id)
    config.use_cache = True
    auto_class = sequence_classification_class(config)
    classifier = auto_class.from_config(config, dtype=causal_lm.dtype)
    backbone = getattr(classifier, classifier.base_model_prefix)
    backbone.load_state_dict(getattr(causal_lm, causal_lm.base_model_prefix).state_dict(), strict=True)
    classifier.score.load_state_dict(getattr(causal_lm, SCORE).state_dict(), strict=True)
    classifier.config.architectures = [type(classifier).__name__]
    return classifier.eval()


def save_reward_model(model: Any, tokenizer: Any, template: Any, out_dir: Any, *, adapter: bool,
                      context: Any) -> None:
    """``save`` of ``reward``: the sequence-classification model in ``out_dir`` (the core adds the tokenizer files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier = sequence_classifier(model, adapter=adapter, pad_token_id=context.pad_token_id)
    classifier.save_pretrained(str(out), safe_serialization=True)
