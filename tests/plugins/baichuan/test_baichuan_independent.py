"""xt-baichuan against a plain-torch reference written from the format's facts, for checkpoints that
are not in shared/ (6 and 12 heads: ALiBi slopes for non-power-of-two head counts).

The reference works per batch row and per query with explicit loops and the rules stated in the
fixture README: W_pack rows q | k | v, NormHead, float32 rotate-half RoPE, ALiBi slopes, "a key is
visible only if it is valid and j <= i", pad query rows (7B style: same rule; 13B style: a fully
masked row = uniform attention over every key), z-loss over all B·(T−1) positions.
"""

from __future__ import annotations

import math

import pytest
import torch
import xt_baichuan  # noqa: F401


def reference_slopes(n: int) -> list[float]:
    def geometric(count: int) -> list[float]:
        ratio = 2.0 ** (-8.0 / count)
        out, value = [], 1.0
        for _ in range(count):
            value *= ratio
            out.append(value)
        return out

    m = 1
    while m * 2 <= n:
        m *= 2
    if m == n:
        return geometric(n)
    return geometric(m) + [s for i, s in enumerate(geometric(2 * m)) if i % 2 == 0][: n - m]


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rope_one(vec: torch.Tensor, pos: int, dim: int) -> torch.Tensor:
    """Rotate-half RoPE of one head vector at one position, dimension by dimension."""
    half = dim // 2
    out = torch.empty_like(vec)
    for d in range(half):
        theta = pos * (1.0 / (10000.0 ** (2 * d / dim)))
        c, s = math.cos(theta), math.sin(theta)
        out[d] = vec[d] * c - vec[d + half] * s
        out[d + half] = vec[d + half] * c + vec[d] * s
    return out


def reference_logits(state: dict[str, torch.Tensor], config, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] computed with float64 loops."""
    sd = {k: v.double() for k, v in state.items()}
    h_n, hidden = config.num_attention_heads, config.hidden_size
    dim = hidden // h_n
    alibi = config.position_embedding == "alibi"
    slopes = reference_slopes(h_n)
    batch, length = ids.shape
    out = torch.zeros(batch, length, config.vocab_size, dtype=torch.float64)
    for b in range(batch):
        valid = [bool(v) for v in mask[b]]
        x = sd["model.embed_tokens.weight"][ids[b]]
        for layer in range(config.num_hidden_layers):
            p = f"model.layers.{layer}."
            normed = rms(x, sd[p + "input_layernorm.weight"], config.rms_norm_eps)
            packed = normed @ sd[p + "self_attn.W_pack.weight"].T
            q, k, v = packed[:, :hidden], packed[:, hidden:2 * hidden], packed[:, 2 * hidden:]
            heads_out = torch.zeros(length, hidden, dtype=torch.float64)
            for h in range(h_n):
                sl = slice(h * dim, (h + 1) * dim)
                qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]
                if not alibi:
                    qh = torch.stack([rope_one(qh[t], t, dim) for t in range(length)])
                    kh = torch.stack([rope_one(kh[t], t, dim) for t in range(length)])
                for i in range(length):
                    keys = [j for j in range(i + 1) if valid[j]]
                    if alibi and not valid[i]:
                        keys = []
                    if not keys:  # fully masked row: uniform over every key
                        weights = torch.full((length,), 1.0 / length, dtype=torch.float64)
                    else:
                        scores = torch.full((length,), -math.inf, dtype=torch.float64)
                        for j in keys:
                            scores[j] = (qh[i] @ kh[j]) / math.sqrt(dim)
                            if alibi:
                                scores[j] += slopes[h] * (j - i)
                        weights = torch.softmax(scores, dim=0)
                    heads_out[i, sl] = weights @ vh
            x = x + heads_out @ sd[p + "self_attn.o_proj.weight"].T
            normed = rms(x, sd[p + "post_attention_layernorm.weight"], config.rms_norm_eps)
            gate = normed @ sd[p + "mlp.gate_proj.weight"].T
            up = normed @ sd[p + "mlp.up_proj.weight"].T
            x = x + (gate * torch.sigmoid(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
        x = rms(x, sd["model.norm.weight"], config.rms_norm_eps)
        head = sd["lm_head.weight"]
        head = head / head.norm(dim=1, keepdim=True)
        out[b] = x @ head.T
    return out


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, z_weight: float) -> float:
    total, count, z_sum, positions = 0.0, 0, 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            row = logits[b, t]
            z_sum += row.max().item() ** 2
            positions += 1
            target = int(labels[b, t + 1])
            if target != -100:
                total += (torch.logsumexp(row, 0) - row[target]).item()
                count += 1
    return total / count + z_weight * z_sum / positions


def make_model(heads: int, variant: str, seed: int):
    from xt_baichuan.remote_code.configuration_baichuan import BaichuanConfig
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM

    extra = {"max_position_embeddings": 128} if variant == "rope" else {}
    config = BaichuanConfig(vocab_size=97, hidden_size=heads * 8, intermediate_size=40, num_hidden_layers=2,
                            num_attention_heads=heads, model_max_length=128, z_loss_weight=2e-3, **extra)
    assert config.position_embedding == variant
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.3 if "lm_head" in name else 0.15)
    return model.eval()


@pytest.mark.parametrize("heads", [6, 12])
@pytest.mark.parametrize("variant", ["rope", "alibi"])
def test_matches_plain_reference(heads, variant):
    model = make_model(heads, variant, seed=heads)
    torch.manual_seed(100 + heads)
    length = 11
    ids = torch.randint(3, 97, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, 7:] = 0   # right padded
    mask[2, :4] = 0   # left padded
    ids = ids.masked_fill(mask == 0, 0)
    expected = reference_logits(model.state_dict(), model.config, ids, mask)
    labels = ids.masked_fill(mask == 0, -100)
    for attn in ("sdpa", "eager"):
        model.config._attn_implementation = attn
        with torch.no_grad():
            out = model(ids, attention_mask=mask, labels=labels)
        got = out.logits.double()
        # valid positions of every row; pad rows too where the rule is documented (right padding,
        # and every pad row of the ALiBi variant)
        rows = mask.bool().clone()
        rows[1] = True
        if variant == "alibi":
            rows[:] = True
        assert (got - expected)[rows].abs().max().item() < 1e-4
        assert out.loss.item() == pytest.approx(reference_loss(expected, labels, 2e-3), abs=1e-5)
    model.config._attn_implementation = "sdpa"
    # left padding does not change the valid positions' logits
    single = model(ids[2:, 4:]).logits
    assert (single[0] - out.logits[2, 4:]).abs().max().item() < 1e-5


def test_slopes_non_power_of_two():
    from xt_baichuan.remote_code.modeling_baichuan import alibi_slopes

    for n in (1, 2, 3, 5, 6, 7, 12, 40):
        assert alibi_slopes(n) == pytest.approx(reference_slopes(n), rel=1e-12)
    assert alibi_slopes(6)[4:] == pytest.approx([2 ** -1, 2 ** -3])  # 8-head slopes 1 and 3
