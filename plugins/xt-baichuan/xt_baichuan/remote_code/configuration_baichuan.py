"""``BaichuanConfig``: one config class for both Baichuan2 variants (``model_type: baichuan``).

Which position encoding a checkpoint uses follows the official files: a config with
``max_position_embeddings`` is the 7B style (RoPE), one without it is the 13B style (ALiBi).
``position_embedding="rope"|"alibi"`` overrides that rule explicitly.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

POSITION_EMBEDDINGS = ("rope", "alibi")


class BaichuanConfig(PreTrainedConfig):
    """Configuration of a Baichuan2 model (defaults: Baichuan2-7B dimensions)."""

    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 125696
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    hidden_act: str = "silu"
    model_max_length: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    z_loss_weight: float = 0.0
    position_embedding: str | None = None

    def __post_init__(self, **kwargs):
        max_positions = kwargs.get("max_position_embeddings")
        if self.position_embedding is None:
            self.position_embedding = "rope" if max_positions is not None else "alibi"
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be 'rope' or 'alibi', got {self.position_embedding!r}")
        if self.position_embedding == "rope" and max_positions is None:
            kwargs["max_position_embeddings"] = self.model_max_length
        if self.position_embedding == "alibi" and "max_position_embeddings" in kwargs and max_positions is None:
            kwargs.pop("max_position_embeddings")
        super().__post_init__(**kwargs)

    @property
    def rope_base(self) -> float:
        """RoPE base (10000 in the official 7B code; ``rope_theta`` in a config overrides it)."""
        theta = self.__dict__.get("rope_theta")
        if theta is None:
            params = self.__dict__.get("rope_parameters") or {}
            theta = params.get("rope_theta") if isinstance(params, dict) else None
        return float(theta) if theta is not None else 10000.0

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads}).")

