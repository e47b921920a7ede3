#!/usr/bin/python3
"""Independent reference forward pass for tessera's logit tests.

Reads a Hugging Face model folder (config.json + safetensors) with its own safetensors parser and
computes log-softmax over the vocabulary at every position of a token sequence, in float64 numpy,
following the Hugging Face modeling code of Llama, Mistral, Qwen2, Qwen3, Gemma 2, GPT-2, OPT,
Falcon, the MoE models and DeepSeek-V3; FP8 checkpoints' weights are dequantized first.
It shares no code with the C++ implementation.

usage: reference.py MODEL_DIR IDS_CSV OUT.f32 [KV_DTYPE]
Writes a raw little-endian float32 array [len(ids), vocab_size]. KV_DTYPE (f32, bf16 or f16;
default f32) is the dtype of the engine's KV cache: keys (after RoPE) and values are rounded to
it, as storing them in the cache does. Nothing else is rounded.
"""
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F8_E4M3":
            arr = e4m3_values(np.frombuffer(raw, dtype=np.uint8))
        elif dtype in ("I32", "I64", "I8"):  # integer checkpoints' packed words: kept as bits
            arr = np.frombuffer(raw, dtype={"I32": "<i4", "I64": "<i8", "I8": "i1"}[dtype])
            out[name] = arr.reshape(info["shape"]).astype(np.int64)
            continue
        else:
            raise ValueError("unsupported dtype " + dtype)
        out[name] = arr.reshape(info["shape"]).astype(np.float64)
    return out


def e4m3_values(codes):
    """FP8 E4M3 ("e4m3fn") codes to their values: sign, 4 exponent bits (bias 7), 3 mantissa bits,
    subnormals below exponent 1, no infinities (0x7f and 0xff are NaN)."""
    c = codes.astype(np.int64)
    sign = np.where(c & 0x80, -1.0, 1.0)
    exp = (c >> 3) & 0xF
    man = (c & 0x7).astype(np.float64)
    normal = (1.0 + man / 8.0) * np.exp2(exp.astype(np.float64) - 7.0)
    subnormal = (man / 8.0) * 2.0 ** -6
    v = sign * np.where(exp == 0, subnormal, normal)
    return np.where((c & 0x7F) == 0x7F, np.nan, v)


def dequantize_fp8(cfg, w):
    """FP8 checkpoints: weight = scale * e4m3(code), the scale per tensor, per row, or per block of
    quantization_config's weight_block_size (compressed-tensors: block_structure)."""
    q = cfg.get("quantization_config") or {}
    block = q.get("weight_block_size")
    for g in (q.get("config_groups") or {}).values():
        block = block or (g.get("weights") or {}).get("block_structure")
    for name in [n for n in w if n.endswith("_scale") or n.endswith("_scale_inv")]:
        base = name[: -len("_scale_inv")] if name.endswith("_scale_inv") else name[: -len("_scale")]
        if base not in w:
            continue
        weight, scale = w[base], w.pop(name)
        if scale.size == 1:
            w[base] = weight * scale.reshape(())
        elif scale.size == weight.shape[0]:
            w[base] = weight * scale.reshape(-1, 1)
        else:
            r, c = block
            full = np.repeat(np.repeat(scale, r, axis=0), c, axis=1)
            w[base] = weight * full[: weight.shape[0], : weight.shape[1]]
    for name in [n for n in w if n.endswith("input_scale")]:
        del w[name]


def nibbles(words, bits, axis):
    """Unpacks int32 words into 32 / bits unsigned values each, the lowest bits first, along
    `axis` (value i of word w is element w * per + i)."""
    per = 32 // bits
    u = np.asarray(words, dtype=np.int64) & 0xFFFFFFFF
    parts = [(u >> (bits * i)) & ((1 << bits) - 1) for i in range(per)]
    stacked = np.stack(parts, axis=axis + 1)
    shape = list(u.shape)
    shape[axis] *= per
    return stacked.reshape(shape)


def dequantize_int(cfg, w):
    """Integer checkpoints: weight [out, in] = scale * (q - zero), per output row and group of
    inputs (g_idx, when stored, names each input's group).
    - GPTQ: qweight [in / per, out] packs inputs; qzeros [groups, out / per] hold zero - 1
      (checkpoint_format gptq_v2: the zero); scales [groups, out].
    - AWQ (GEMM): qweight [in, out / per] packs outputs in the order 0 2 4 6 1 3 5 7, as qzeros.
    - compressed-tensors pack-quantized: weight_packed [out, in / per] packs inputs, values offset
      by 2^(bits-1) unless weight_zero_point [out / per, groups] (outputs packed) gives zeros;
      weight_scale [out, groups]; int-quantized: an int8 weight times weight_scale.
    What the engine dequantizes at load (8-bit weights, groups in act order) it rounds once to
    the model's torch_dtype; 4-bit weights in contiguous groups it runs exactly."""
    q = cfg.get("quantization_config") or {}
    kind = {"float16": "f16", "float32": "f32"}.get(cfg.get("torch_dtype"), "bf16")

    def as_run(weight, bits, gidx, group_size):
        n_in = weight.shape[1]
        plain = np.arange(n_in) // group_size if group_size and group_size > 0 else np.zeros(n_in)
        if bits == 8 or not np.array_equal(gidx, plain):
            return round_to(weight, kind)
        return weight

    method = q.get("quant_method")
    if method in ("gptq", "awq"):
        bits = q.get("bits", q.get("w_bit", 4))
        per = 32 // bits
        for name in [n for n in w if n.endswith(".qweight")]:
            base = name[: -len(".qweight")]
            packed, qz, scales = w.pop(name), w.pop(base + ".qzeros"), w.pop(base + ".scales")
            if method == "gptq":
                vals = nibbles(packed.T, bits, 1)  # [out, in]
                zeros = nibbles(qz, bits, 1)[:, : scales.shape[1]]  # [groups, out]
                if q.get("checkpoint_format", "gptq") != "gptq_v2":
                    zeros = zeros + 1
            else:
                order = [0, 2, 4, 6, 1, 3, 5, 7]
                def unawq(x):
                    raw = nibbles(x, bits, 1)  # element w * 8 + i is nibble i of word w
                    outv = np.empty_like(raw)
                    for i, col in enumerate(order):
                        outv[:, col::8] = raw[:, i::8]
                    return outv
                vals = unawq(packed).T  # [out, in]
                zeros = unawq(qz)
            n_in = vals.shape[1]
            group_size = q.get("group_size", q.get("q_group_size", 128))
            gidx = w.pop(base + ".g_idx", None)
            if gidx is None:
                gidx = np.arange(n_in) // (group_size if group_size > 0 else n_in)
            gidx = gidx.astype(np.int64)
            w[base + ".weight"] = as_run((vals - zeros[gidx].T) * scales[gidx].T, bits, gidx,
                                         group_size)
        return
    if method != "compressed-tensors":
        return
    group = next(iter((q.get("config_groups") or {}).values()), {})
    wq = group.get("weights") or {}
    if wq.get("type") != "int":
        return
    bits = wq.get("num_bits", 4)
    per = 32 // bits
    for name in [n for n in w if n.endswith(".weight_packed")]:
        base = name[: -len("_packed")]
        shape = w.pop(base + "_shape", None)
        vals = nibbles(w.pop(name), bits, 1)
        if shape is not None:
            vals = vals[:, : int(shape[1])]
        scales = w.pop(base + "_scale").reshape(vals.shape[0], -1)
        n_groups = scales.shape[1]
        zp = w.pop(base + "_zero_point", None)
        if zp is None:
            zeros = np.full((vals.shape[0], n_groups), 1 << (bits - 1))
        else:
            zeros = nibbles(zp, bits, 0)[: vals.shape[0]]
        gidx = w.pop(base + "_g_idx", None)
        if gidx is None:
            gs = wq.get("group_size") if wq.get("strategy") == "group" else None
            gidx = np.arange(vals.shape[1]) // gs if gs else np.zeros(vals.shape[1], np.int64)
        gidx = gidx.astype(np.int64)
        w[base] = as_run((vals - zeros[:, gidx]) * scales[:, gidx], bits, gidx, gs)
    for name in [n for n in w if n.endswith(".weight") and w[n].dtype == np.int64]:
        w[name] = round_to(w[name] * w.pop(name + "_scale").reshape(-1, 1), kind)


def load_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = []
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
    weights = {}
    for name in files:
        weights.update(read_safetensors(os.path.join(model_dir, name)))
    return weights


def inv_freq_hf(cfg, head_dim):
    """Rotary inverse frequencies computed in float32 as transformers does."""
    dim = int(head_dim * cfg.get("partial_rotary_factor", 1.0))
    base = np.float32(cfg.get("rope_theta", 10000.0))
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    pos_freqs = (base ** exps).astype(np.float32)
    inv = (np.float32(1.0) / pos_freqs).astype(np.float32)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    attention_factor = 1.0
    if kind == "linear":
        inv = (inv / np.float32(scaling["factor"])).astype(np.float32)
    elif kind == "llama3":
        factor = np.float32(scaling["factor"])
        low = np.float32(scaling["low_freq_factor"])
        high = np.float32(scaling["high_freq_factor"])
        old = np.float32(scaling["original_max_position_embeddings"])
        low_wavelen = old / low
        high_wavelen = old / high
        wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
        smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / factor + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    elif kind == "yarn":
        factor = scaling["factor"]
        orig = scaling.get("original_max_position_embeddings", cfg["max_position_embeddings"])

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if scaling.get("attention_factor") is not None:
            attention_factor = scaling["attention_factor"]
        elif scaling.get("mscale") and scaling.get("mscale_all_dim"):
            attention_factor = get_mscale(factor, scaling["mscale"]) / get_mscale(factor, scaling["mscale_all_dim"])
        else:
            attention_factor = get_mscale(factor)
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def corr_dim(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(cfg.get("rope_theta", 10000.0)))

        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1).astype(np.float32)
        extra_factor = 1 - ramp
        interp = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
        inv = (interp * (1 - extra_factor) + inv * extra_factor).astype(np.float32)
    elif kind != "default":
        raise ValueError("rope type " + kind)
    return inv, attention_factor


def round_to(x, kind):
    """Rounds float64 values to a storage dtype (round to nearest even) and back."""
    if kind == "f32":
        return x.astype(np.float32).astype(np.float64)
    if kind == "f16":
        return x.astype(np.float16).astype(np.float64)
    if kind == "bf16":
        u = x.astype(np.float32).view(np.uint32)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        return u.view(np.float32).astype(np.float64)
    raise ValueError("kv dtype " + kind)


def rms_norm(x, w, eps, unit_offset):
    var = np.mean(x * x, axis=-1, keepdims=True)
    y = x / np.sqrt(var + eps)
    return y * ((1.0 + w) if unit_offset else w)


def rotate(x, cos, sin):
    """x [T, H, D]; cos/sin [T, R] over the first 2R dims (rotate_half layout)."""
    r = cos.shape[1]
    x1 = x[..., :r]
    x2 = x[..., r:2 * r]
    c = cos[:, None, :]
    s = sin[:, None, :]
    out = x.copy()
    out[..., :r] = x1 * c - x2 * s
    out[..., r:2 * r] = x2 * c + x1 * s
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def activation(name):
    """An ungated MLP's activation by its transformers name (GPT-2, OPT, Falcon)."""
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return gelu_tanh
    if name == "gelu":
        return lambda v: 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))
    if name == "relu":
        return lambda v: np.maximum(v, 0.0)
    raise ValueError("activation " + name)


def layer_norm(x, w, b, eps):
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def log_softmax(logits):
    m = logits.max(axis=1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))


def forward_gpt2(cfg, w, ids, kv_dtype):
    """GPT2LMHeadModel: Conv1D layers compute x @ W + b with W stored [in, out]."""
    pre = "" if "wte.weight" in w else "transformer."
    hidden = cfg.get("n_embd", cfg.get("hidden_size"))
    n_heads = cfg.get("n_head", cfg.get("num_attention_heads"))
    n_layers = cfg.get("n_layer", cfg.get("num_hidden_layers"))
    head_dim = hidden // n_heads
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = activation(cfg.get("activation_function", "gelu_new"))
    t = len(ids)
    x = w[pre + "wte.weight"][np.array(ids)] + w[pre + "wpe.weight"][np.arange(t)]
    pos = np.arange(t)
    allowed = pos[:, None] >= pos[None, :]
    for layer in range(n_layers):
        p = pre + "h.%d." % layer
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[:, i * hidden:(i + 1) * hidden].reshape(t, n_heads, head_dim) for i in range(3))
        k = round_to(k, kv_dtype)
        v = round_to(v, kv_dtype)
        scale = head_dim ** -0.5 if cfg.get("scale_attn_weights", True) else 1.0
        if cfg.get("scale_attn_by_inverse_layer_idx", False):
            scale /= layer + 1
        out = np.zeros((t, n_heads, head_dim))
        for hq in range(n_heads):
            scores = np.where(allowed, (q[:, hq, :] @ k[:, hq, :].T) * scale, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, hq, :] = probs @ v[:, hq, :]
        x = x + out.reshape(t, hidden) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        fc = act(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + fc @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w[pre + "ln_f.weight"], w[pre + "ln_f.bias"], eps)
    head = w[pre + "wte.weight"] if cfg.get("tie_word_embeddings", True) else w["lm_head.weight"]
    return log_softmax(x @ head.T)


def forward_opt(cfg, w, ids, kv_dtype):
    """OPTForCausalLM: positions offset by 2; do_layer_norm_before picks pre- or post-norm."""
    d = "model.decoder."
    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    head_dim = hidden // n_heads
    pre_norm = cfg.get("do_layer_norm_before", True)
    act = activation(cfg.get("activation_function", "relu"))
    t = len(ids)
    x = w[d + "embed_tokens.weight"][np.array(ids)]
    if d + "project_in.weight" in w:  # OPT-350m: word_embed_proj_dim < hidden_size
        x = x @ w[d + "project_in.weight"].T
    x = x + w[d + "embed_positions.weight"][np.arange(t) + 2]
    pos = np.arange(t)
    allowed = pos[:, None] >= pos[None, :]

    def lin(h, name):
        out = h @ w[name + ".weight"].T
        return out + w[name + ".bias"] if name + ".bias" in w else out

    def ln(h, name):
        return layer_norm(h, w[name + ".weight"], w[name + ".bias"], 1e-5)

    for layer in range(cfg["num_hidden_layers"]):
        p = d + "layers.%d." % layer
        h = ln(x, p + "self_attn_layer_norm") if pre_norm else x
        q = (lin(h, p + "self_attn.q_proj") * head_dim ** -0.5).reshape(t, n_heads, head_dim)
        k = round_to(lin(h, p + "self_attn.k_proj").reshape(t, n_heads, head_dim), kv_dtype)
        v = round_to(lin(h, p + "self_attn.v_proj").reshape(t, n_heads, head_dim), kv_dtype)
        out = np.zeros((t, n_heads, head_dim))
        for hq in range(n_heads):
            scores = np.where(allowed, q[:, hq, :] @ k[:, hq, :].T, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, hq, :] = probs @ v[:, hq, :]
        x = x + lin(out.reshape(t, hidden), p + "self_attn.out_proj")
        if not pre_norm:
            x = ln(x, p + "self_attn_layer_norm")
        h = ln(x, p + "final_layer_norm") if pre_norm else x
        x = x + lin(act(lin(h, p + "fc1")), p + "fc2")
        if not pre_norm:
            x = ln(x, p + "final_layer_norm")
    if pre_norm:
        x = ln(x, d + "final_layer_norm")
    if d + "project_out.weight" in w:
        x = x @ w[d + "project_out.weight"].T
    head = w[d + "embed_tokens.weight"] if cfg.get("tie_word_embeddings", True) else w["lm_head.weight"]
    return log_softmax(x @ head.T)


def forward_falcon(cfg, w, ids, kv_dtype):
    """FalconForCausalLM: query_key_value split as FalconAttention._split_heads does, rotary,
    and parallel (one or two LayerNorms) or sequential blocks."""
    hidden = cfg.get("hidden_size", cfg.get("n_embed"))
    n_heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    head_dim = hidden // n_heads
    new_arch = cfg.get("new_decoder_architecture", False)
    multi_query = cfg.get("multi_query", True)
    parallel = cfg.get("parallel_attn", True)
    if new_arch:
        n_kv = cfg.get("num_kv_heads") or n_heads
    else:
        n_kv = 1 if multi_query else n_heads
    n_ln = cfg.get("num_ln_in_parallel_attn")
    if n_ln is None and new_arch:
        n_ln = 2
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    act = activation(cfg.get("activation", "gelu"))
    t = len(ids)
    inv, attn_factor = inv_freq_hf(cfg, head_dim)
    angles = (np.arange(t, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32).astype(np.float64)
    cos = np.cos(angles) * attn_factor
    sin = np.sin(angles) * attn_factor
    pos = np.arange(t)
    allowed = pos[:, None] >= pos[None, :]

    def lin(h, name):
        out = h @ w[name + ".weight"].T
        return out + w[name + ".bias"] if name + ".bias" in w else out

    def ln(h, name):
        return layer_norm(h, w[name + ".weight"], w[name + ".bias"], eps)

    x = w["transformer.word_embeddings.weight"][np.array(ids)]
    for layer in range(n_layers):
        p = "transformer.h.%d." % layer
        residual = x
        if new_arch and n_ln == 2:
            attn_in = ln(x, p + "ln_attn")
            mlp_in = ln(x, p + "ln_mlp")
        else:
            attn_in = ln(x, p + "input_layernorm")
        fused = lin(attn_in, p + "self_attention.query_key_value")
        # Each group: its query heads, then one key head, then one value head.
        per = n_heads // n_kv
        g = fused.reshape(t, n_kv, per + 2, head_dim)
        q = g[:, :, :per, :].reshape(t, n_heads, head_dim)
        k = g[:, :, per, :]
        v = g[:, :, per + 1, :]
        q = rotate(q, cos, sin)
        k = round_to(rotate(k, cos, sin), kv_dtype)
        v = round_to(v, kv_dtype)
        out = np.zeros((t, n_heads, head_dim))
        for hq in range(n_heads):
            kh = hq // per
            scores = np.where(allowed, (q[:, hq, :] @ k[:, kh, :].T) / math.sqrt(head_dim), -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, hq, :] = probs @ v[:, kh, :]
        attn = lin(out.reshape(t, hidden), p + "self_attention.dense")
        if not new_arch:
            if parallel:
                mlp_in = attn_in
            else:
                residual = residual + attn
                mlp_in = ln(residual, p + "post_attention_layernorm")
        if new_arch and parallel and n_ln == 1:
            mlp_in = attn_in
        mlp = lin(act(lin(mlp_in, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        if new_arch or parallel:
            mlp = mlp + attn
        x = residual + mlp
    x = ln(x, "transformer.ln_f")
    tied = cfg.get("tie_word_embeddings", True)
    head = w["transformer.word_embeddings.weight"] if tied else w["lm_head.weight"]
    return log_softmax(x @ head.T)


def sparse_moe(cfg, arch, w, p, h, act):
    """MixtralSparseMoeBlock / Qwen3MoeSparseMoeBlock / Qwen2MoeSparseMoeBlock: softmax router,
    top-k experts, weights renormalised (always for Mixtral, by norm_topk_prob for the Qwens),
    SwiGLU experts; Qwen2-MoE adds a shared expert scaled by sigmoid(shared_expert_gate(x))."""
    if arch == "MixtralForCausalLM":
        m, names, n_exp, renorm = p + "block_sparse_moe.", ("w1", "w3", "w2"), cfg["num_local_experts"], True
    else:
        m, names, n_exp, renorm = p + "mlp.", ("gate_proj", "up_proj", "down_proj"), cfg["num_experts"], cfg.get("norm_topk_prob", False)
    k = cfg.get("num_experts_per_tok", 2)
    logits = h @ w[m + "gate.weight"].T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        chosen = np.argsort(-probs[t], kind="stable")[:k]
        weights = probs[t, chosen]
        if renorm:
            weights = weights / weights.sum()
        for e, g in zip(chosen, weights):
            ep = m + "experts.%d." % e
            y = act(h[t] @ w[ep + names[0] + ".weight"].T) * (h[t] @ w[ep + names[1] + ".weight"].T)
            out[t] += g * (y @ w[ep + names[2] + ".weight"].T)
    if m + "shared_expert_gate.weight" in w:
        sp = m + "shared_expert."
        y = act(h @ w[sp + "gate_proj.weight"].T) * (h @ w[sp + "up_proj.weight"].T)
        gate = 1.0 / (1.0 + np.exp(-(h @ w[m + "shared_expert_gate.weight"].T)))
        out = out + gate * (y @ w[sp + "down_proj.weight"].T)
    return out


def forward_deepseek_v3(cfg, w, ids, kv_dtype):
    """DeepseekV3ForCausalLM as transformers computes it (keys and values expanded per head from
    the latent, nothing absorbed): interleaved rotary dims, yarn softmax scale, dense first
    layers, noaux_tc routing with shared experts."""
    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kvl, ql = cfg["kv_lora_rank"], cfg.get("q_lora_rank") or 0
    eps = cfg.get("rms_norm_eps", 1e-6)
    qk = nope + rope
    scale = qk ** -0.5
    rs = cfg.get("rope_scaling") or {}
    if rs.get("mscale_all_dim") and rs.get("factor", 1) > 1:
        m = 0.1 * rs["mscale_all_dim"] * math.log(rs["factor"]) + 1.0
        scale *= m * m
    t = len(ids)
    inv, attn_factor = inv_freq_hf(cfg, rope)
    angles = (np.arange(t, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32).astype(np.float64)
    cos = np.cos(angles) * attn_factor
    sin = np.sin(angles) * attn_factor

    def interleaved_rope(x):  # x [t, heads, rope]: pairs (2i, 2i + 1), as rope_interleave does
        x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
        return rotate(x, cos, sin)

    def mlp(h, prefix):
        gate = h @ w[prefix + "gate_proj.weight"].T
        up = h @ w[prefix + "up_proj.weight"].T
        return (silu(gate) * up) @ w[prefix + "down_proj.weight"].T

    def moe(h, m):
        n_exp, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        n_group, topk_group = cfg.get("n_group", 1), cfg.get("topk_group", 1)
        scores = 1.0 / (1.0 + np.exp(-(h @ w[m + "gate.weight"].T)))
        choice = scores + w[m + "gate.e_score_correction_bias"]
        out = np.zeros_like(h)
        for i in range(t):
            groups = choice[i].reshape(n_group, -1)
            group_scores = np.sort(groups, axis=1)[:, -2:].sum(axis=1)
            keep = np.argsort(-group_scores, kind="stable")[:topk_group]
            masked = np.zeros_like(groups)
            masked[keep] = groups[keep]
            chosen = np.argsort(-masked.reshape(-1), kind="stable")[:k]
            weights = scores[i, chosen]
            if cfg.get("norm_topk_prob", True):
                weights = weights / (weights.sum() + 1e-20)
            weights = weights * cfg.get("routed_scaling_factor", 1.0)
            for e, g in zip(chosen, weights):
                out[i] += g * mlp(h[i:i + 1], m + "experts.%d." % e)[0]
        if cfg.get("n_shared_experts"):
            out = out + mlp(h, m + "shared_experts.")
        return out

    pos = np.arange(t)
    allowed = pos[:, None] >= pos[None, :]
    x = w["model.embed_tokens.weight"][np.array(ids)]
    for layer in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % layer
        a = p + "self_attn."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps, False)
        if ql:
            q = rms_norm(h @ w[a + "q_a_proj.weight"].T, w[a + "q_a_layernorm.weight"], eps, False)
            q = q @ w[a + "q_b_proj.weight"].T
        else:
            q = h @ w[a + "q_proj.weight"].T
        q = q.reshape(t, n_heads, qk)
        q_nope, q_pe = q[..., :nope], interleaved_rope(q[..., nope:])
        kva = h @ w[a + "kv_a_proj_with_mqa.weight"].T
        c = rms_norm(kva[:, :kvl], w[a + "kv_a_layernorm.weight"], eps, False)
        k_pe = interleaved_rope(kva[:, None, kvl:])[:, 0, :]
        # The cache holds the latent and the rotary key.
        c = round_to(c, kv_dtype)
        k_pe = round_to(k_pe, kv_dtype)
        kv = (c @ w[a + "kv_b_proj.weight"].T).reshape(t, n_heads, nope + vd)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        out = np.zeros((t, n_heads, vd))
        for hq in range(n_heads):
            scores = (q_nope[:, hq, :] @ k_nope[:, hq, :].T + q_pe[:, hq, :] @ k_pe.T) * scale
            scores = np.where(allowed, scores, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, hq, :] = probs @ v[:, hq, :]
        x = x + out.reshape(t, n_heads * vd) @ w[a + "o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, False)
        if layer < cfg.get("first_k_dense_replace", 0):
            x = x + mlp(h, p + "mlp.")
        else:
            x = x + moe(h, p + "mlp.")
    x = rms_norm(x, w["model.norm.weight"], eps, False)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return log_softmax(x @ head.T)


def forward(model_dir, ids, kv_dtype="f32"):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    arch = cfg["architectures"][0]
    w = load_weights(model_dir)
    dequantize_int(cfg, w)
    dequantize_fp8(cfg, w)
    if arch == "GPT2LMHeadModel":
        return forward_gpt2(cfg, w, ids, kv_dtype)
    if arch == "OPTForCausalLM":
        return forward_opt(cfg, w, ids, kv_dtype)
    if arch in ("FalconForCausalLM", "RWForCausalLM"):
        return forward_falcon(cfg, w, ids, kv_dtype)
    if arch == "DeepseekV3ForCausalLM":
        return forward_deepseek_v3(cfg, w, ids, kv_dtype)
    gemma = arch == "Gemma2ForCausalLM"
    qwen3 = arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
    moe = arch in ("MixtralForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM")
    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or hidden // n_heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    n_layers = cfg["num_hidden_layers"]
    act_name = cfg.get("hidden_activation") or cfg.get("hidden_act", "silu")
    act = gelu_tanh if act_name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast") else silu
    dtype = cfg.get("torch_dtype", "bfloat16")

    # Per-layer sliding windows.
    window = cfg.get("sliding_window") or 0
    windows = [0] * n_layers
    if cfg.get("layer_types"):
        windows = [window if t == "sliding_attention" else 0 for t in cfg["layer_types"]]
    elif window:
        if arch in ("MistralForCausalLM", "MixtralForCausalLM"):
            windows = [window] * n_layers
        elif gemma:
            windows = [window if i % 2 == 0 else 0 for i in range(n_layers)]
        elif arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM") and cfg.get("use_sliding_window", False):
            mwl = cfg.get("max_window_layers", 0)
            windows = [window if i >= mwl else 0 for i in range(n_layers)]

    scale = (cfg["query_pre_attn_scalar"] if gemma and cfg.get("query_pre_attn_scalar") else head_dim) ** -0.5
    softcap = cfg.get("attn_logit_softcapping") if gemma else None
    final_softcap = cfg.get("final_logit_softcapping") if gemma else None

    t = len(ids)
    inv, attn_factor = inv_freq_hf(cfg, head_dim)
    angles = (np.arange(t, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32).astype(np.float64)
    cos = np.cos(angles) * attn_factor
    sin = np.sin(angles) * attn_factor

    x = w["model.embed_tokens.weight"][np.array(ids)]
    if gemma:
        # transformers computes the normaliser in the model's dtype.
        norm_scale = np.array([math.sqrt(hidden)], dtype=np.float32)
        if dtype == "bfloat16":
            u = norm_scale.view(np.uint32)
            norm_scale = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
        elif dtype == "float16":
            norm_scale = norm_scale.astype(np.float16).astype(np.float32)
        x = x * float(norm_scale[0])

    pos = np.arange(t)
    group = n_heads // n_kv
    for layer in range(n_layers):
        p = "model.layers.%d." % layer
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps, gemma)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.reshape(t, n_heads, head_dim)
        k = k.reshape(t, n_kv, head_dim)
        v = v.reshape(t, n_kv, head_dim)
        if qwen3:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps, False)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps, False)
        q = rotate(q, cos, sin)
        k = round_to(rotate(k, cos, sin), kv_dtype)
        v = round_to(v, kv_dtype)
        allowed = pos[:, None] >= pos[None, :]
        if windows[layer]:
            allowed &= (pos[:, None] - pos[None, :]) < windows[layer]
        out = np.zeros((t, n_heads, head_dim))
        for hq in range(n_heads):
            kh = hq // group
            scores = (q[:, hq, :] @ k[:, kh, :].T) * scale
            if softcap:
                scores = np.tanh(scores / softcap) * softcap
            scores = np.where(allowed, scores, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, hq, :] = probs @ v[:, kh, :]
        attn = out.reshape(t, n_heads * head_dim) @ w[p + "self_attn.o_proj.weight"].T
        if p + "self_attn.o_proj.bias" in w:
            attn = attn + w[p + "self_attn.o_proj.bias"]
        if gemma:
            attn = rms_norm(attn, w[p + "post_attention_layernorm.weight"], eps, True)
            x = x + attn
            h = rms_norm(x, w[p + "pre_feedforward_layernorm.weight"], eps, True)
        else:
            x = x + attn
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, False)
        if moe:
            x = x + sparse_moe(cfg, arch, w, p, h, act)
            continue
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        if p + "mlp.gate_proj.bias" in w:
            gate = gate + w[p + "mlp.gate_proj.bias"]
            up = up + w[p + "mlp.up_proj.bias"]
        mlp = (act(gate) * up) @ w[p + "mlp.down_proj.weight"].T
        if p + "mlp.down_proj.bias" in w:
            mlp = mlp + w[p + "mlp.down_proj.bias"]
        if gemma:
            mlp = rms_norm(mlp, w[p + "post_feedforward_layernorm.weight"], eps, True)
        x = x + mlp

    x = rms_norm(x, w["model.norm.weight"], eps, gemma)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", gemma) else w["lm_head.weight"]
    logits = x @ head.T
    if final_softcap:
        logits = np.tanh(logits / final_softcap) * final_softcap
    return log_softmax(logits)


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    ids = [int(x) for x in sys.argv[2].split(",")]
    logprobs = forward(sys.argv[1], ids, sys.argv[4] if len(sys.argv) == 5 else "f32")
    logprobs.astype("<f4").tofile(sys.argv[3])


if __name__ == "__main__":
    main()
