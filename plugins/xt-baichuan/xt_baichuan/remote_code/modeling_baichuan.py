"""Baichuan2 for current transformers: 7B style (RoPE) and 13B style (ALiBi) in one set of classes.

Written from the facts of the official format (see the plugin docs), not from the official remote
code: fused ``W_pack`` (rows q | k | v), NormHead ``lm_head`` (rows L2-normalised at run time, stored
as loaded), RMSNorm, SwiGLU MLP, float32 RoPE (rotate-half, base 10000) or ALiBi, and the official
padding rules, including what pad query rows see (7B: valid keys up to their position; 13B: a fully
masked row, i.e. uniform attention over every key).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_baichuan import BaichuanConfig

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- building blocks


class BaichuanRMSNorm(nn.Module):
    """RMSNorm: variance in float32, eps inside the rsqrt, cast to the weight dtype, times the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden32 = hidden_states.to(torch.float32)
        variance = hidden32.pow(2).mean(-1, keepdim=True)
        normed = hidden32 * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * normed.to(self.weight.dtype)


class NormHead(nn.Linear):
    """The output layer: logits = h · normalize(W, dim=1)ᵀ. The stored weight is never modified."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__(hidden_size, vocab_size, bias=False)
        self._cached: tuple[Any, torch.Tensor] | None = None

    def normalized_weight(self) -> torch.Tensor:
        weight = self.weight
        if self.training or torch.is_grad_enabled() and weight.requires_grad:
            self._cached = None
            return F.normalize(weight, dim=1)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, F.normalize(weight.detach(), dim=1))
        return self._cached[1]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.normalized_weight()
        return F.linear(hidden_states, weight.to(hidden_states.dtype))


class BaichuanMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 cos/sin of shape [B, 1, T, head_dim] (computed on the fly: never in the state dict)."""
    device = position_ids.device
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate in float32 and cast back to the input dtype."""
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes: (2^(-8/n))^(i+1) for a power of two n; otherwise those of the nearest lower power
    of two m followed by every other slope of 2m."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    lower = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower]


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment index per token: a new segment starts wherever a position is not the previous plus one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    return starts.long().cumsum(-1)


def build_attention_mask(
    config: BaichuanConfig,
    batch_size: int,
    query_length: int,
    past_length: int,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The additive attention mask [B, H|1, Q, K] (ALiBi bias included), or None for plain causal.

    A key is visible when it is valid, not in the future and (for packed rows given by restarting
    ``position_ids``) in the query's segment. Pad query rows: the 7B style keeps the rule above (the
    row still sees valid keys up to its position); the 13B style masks the whole row, which the
    softmax turns into uniform attention over every key, as the official code does.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.to(dtype)  # a prepared additive mask is used as given
    alibi = config.position_embedding == "alibi"
    key_length = past_length + query_length
    key_valid = None
    if attention_mask is not None:
        key_valid = attention_mask[:, -key_length:].to(device=device, dtype=torch.bool)
        if bool(key_valid.all()):
            key_valid = None
    segments = None
    if position_ids is not None and past_length == 0 and query_length > 1:
        seg = packed_segments(position_ids.to(device).expand(batch_size, -1))
        if bool((seg != seg[:, :1]).any()):
            segments = seg
    if not alibi and key_valid is None and segments is None and (query_length == 1 or past_length == 0):
        return None
    query_index = torch.arange(past_length, key_length, device=device)
    key_index = torch.arange(key_length, device=device)
    visible = (key_index[None, :] <= query_index[:, None])[None]  # [1, Q, K]
    if key_valid is not None:
        visible = visible & key_valid[:, None, :]
        if alibi:
            visible = visible & key_valid[:, past_length:, None]
    if segments is not None:
        visible = visible & (segments[:, :, None] == segments[:, None, :])
    visible = visible[:, None]  # [B, 1, Q, K]
    min_value = torch.finfo(dtype).min
    if alibi:
        slopes = torch.tensor(alibi_slopes(config.num_attention_heads), dtype=torch.float32, device=device)
        distance = (key_index[None, :] - query_index[:, None]).float()  # j - i (<= 0 where visible)
        bias = slopes[:, None, None] * distance[None]  # [H, Q, K]
        return torch.where(visible, bias[None].to(dtype), torch.tensor(min_value, dtype=dtype, device=device))
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(visible, zero, torch.tensor(min_value, dtype=dtype, device=device))


# --------------------------------------------------------------------------- attention and layers


def eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    mask: torch.Tensor | None, scaling: float, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if mask is None:
        q_len, k_len = query.shape[2], key.shape[2]
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    else:
        scores = torch.clamp(scores + mask, min=torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value), weights


class BaichuanAttention(nn.Module):
    """Multi-head attention with the fused ``W_pack`` projection (rows q | k | v)."""

    def __init__(self, config: BaichuanConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        flash_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, q_len, _ = hidden_states.shape
        proj = self.W_pack(hidden_states).view(batch, q_len, 3, self.num_heads, self.head_dim)
        query, key, value = (proj[:, :, i].transpose(1, 2) for i in range(3))
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        implementation = self.config._attn_implementation or "sdpa"
        weights = None
        if implementation.startswith("flash"):
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            output, weights = ALL_ATTENTION_FUNCTIONS[implementation](
                self, query, key, value, (flash_kwargs or {}).get("attention_mask"),
                dropout=0.0, scaling=self.scaling, position_ids=(flash_kwargs or {}).get("position_ids"))
            output = output.reshape(batch, q_len, self.hidden_size)
        else:
            if implementation == "eager" or kwargs.get("output_attentions"):
                output, weights = eager_attention(self, query, key, value, attention_mask, self.scaling, 0.0)
            else:
                output = F.scaled_dot_product_attention(
                    query, key, value, attn_mask=attention_mask, scale=self.scaling,
                    is_causal=attention_mask is None and q_len > 1)
            output = output.transpose(1, 2).reshape(batch, q_len, self.hidden_size)
        return self.o_proj(output), weights


class BaichuanDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BaichuanConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = BaichuanAttention(config, layer_idx)
        self.mlp = BaichuanMLP(config)
        self.input_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        flash_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        attn_out, _ = self.self_attn(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                     position_embeddings=position_embeddings, cache=cache,
                                     flash_kwargs=flash_kwargs, **kwargs)
        hidden_states = residual + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# --------------------------------------------------------------------------- models


class BaichuanPreTrainedModel(PreTrainedModel):
    config: BaichuanConfig
    config_class = BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BaichuanDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": BaichuanDecoderLayer, "attentions": BaichuanAttention}


class BaichuanModel(BaichuanPreTrainedModel):
    """The decoder stack (no head)."""

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__(config)
        if config.position_embedding == "alibi" and str(config._attn_implementation or "").startswith("flash"):
            raise ValueError("Flash attention cannot add the ALiBi bias of the 13B-style Baichuan2; "
                             "use attn_implementation='sdpa' or 'eager'.")
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(BaichuanDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = BaichuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        batch, q_len = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        device = inputs_embeds.device
        explicit_positions = position_ids
        if position_ids is None:  # the official default; generate() passes positions counted from the mask
            position_ids = torch.arange(past, past + q_len, device=device)[None].expand(batch, -1)
        implementation = str(self.config._attn_implementation or "sdpa")
        flash_kwargs = None
        if implementation.startswith("flash"):
            mask = None
            flash_kwargs = {"attention_mask": attention_mask if attention_mask is not None and attention_mask.dim() == 2
                            and not bool(attention_mask.all()) else None,
                            "position_ids": explicit_positions}
        else:
            mask = build_attention_mask(self.config, batch, q_len, past, attention_mask, explicit_positions,
                                        inputs_embeds.dtype, device)
        position_embeddings = None
        if self.config.position_embedding == "rope":
            position_embeddings = rope_cos_sin(position_ids, self.config.hidden_size // self.config.num_attention_heads,
                                               self.config.rope_base)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=position_embeddings,
                                  cache=cache, flash_kwargs=flash_kwargs, **kwargs)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, z_loss_weight: float = 0.0,
                   num_items_in_batch: Any = None) -> torch.Tensor:
    """Mean cross-entropy over labels != -100 (shifted), plus z_loss_weight × mean max(logit)² over all
    B·(T−1) shifted positions (pads and ignored labels included), as in the official code."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    flat_logits = shift_logits.reshape(-1, shift_logits.shape[-1])
    flat_labels = shift_labels.reshape(-1)
    if num_items_in_batch is not None:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device, dtype=loss.dtype)
    else:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)
    if z_loss_weight:
        loss = loss + z_loss_weight * flat_logits.max(dim=-1).values.pow(2).mean()
    return loss


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    """Baichuan2 with its NormHead; the official checkpoint layout (``model.*``, ``lm_head.weight``)."""

    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: BaichuanConfig) -> None:
        super().__init__(config)
        self.model = BaichuanModel(config)
        self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0 and labels is None:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor) and labels is None:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, float(getattr(self.config, "z_loss_weight", 0.0) or 0.0),
                                  num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["BaichuanForCausalLM", "BaichuanModel", "BaichuanPreTrainedModel", "alibi_slopes", "causal_lm_loss"]

