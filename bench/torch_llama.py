#!/usr/bin/python3
"""PyTorch baseline for ajuste's model benches (bench/forward.ts, bench/train.ts, bench/qlora.ts).

A plain-PyTorch Llama that mirrors transformers' LlamaForCausalLM (eager attention path) and a PEFT-style
LoRA wrapper, timed the way a PyTorch user would write the loop. No transformers / peft needed.

Usage (run with Debian's torch: /usr/bin/python3):
    /usr/bin/python3 bench/torch_llama.py forward  --shape smollm2|tiny [--iters N] [--seconds S]
    /usr/bin/python3 bench/torch_llama.py generate --shape smollm2|tiny [--prompt 32] [--new 64]
    /usr/bin/python3 bench/torch_llama.py train    --shape smollm2|tiny [--dtype f32|bf16] [--iters N] [--seconds S]
    /usr/bin/python3 bench/torch_llama.py fetch-openblas   (apt-get download + unpack OpenBLAS into ~/.cache)
    (--json is accepted and ignored: the last stdout line is always one JSON object. --blas auto|system: see
    "BLAS selection" below.)

Model details (as transformers' modeling_llama, eager attention):
  - RMSNorm: x * rsqrt(mean(x^2) + eps) computed in f32, cast back, times weight.
  - RoPE: inv_freq = 1 / theta^(arange(0, d, 2)/d), emb = cat(freqs, freqs), q*cos + rotate_half(q)*sin.
  - GQA via repeat_kv; SwiGLU MLP down(silu(gate(x)) * up(x)); tied or untied lm_head.
  - Attention: torch 1.13 has no F.scaled_dot_product_attention, so this uses the standard path:
    softmax(QK^T / sqrt(d) + causal mask (finfo.min above the diagonal), dtype=f32) @ V.
    (If the running torch does have SDPA, it is used with is_causal=True; the JSON "attention" field says which.)
  - Init as transformers: Linear/Embedding weights ~ N(0, 0.02), norm weights 1.
  - Loss: HF's shift (logits[:, :-1] vs labels[:, 1:]), mean cross-entropy over B*(T-1) tokens, full logits
    materialised in f32 (what LlamaForCausalLM does).
LoRA (PEFT-style): frozen base nn.Linear; lora_A (r x in) kaiming_uniform_(a=sqrt(5)), lora_B (out x r) zeros,
  y = base(x) + lora_B(lora_A(x)) * alpha / r, dropout 0; on q,k,v,o,gate,up,down of every layer (PEFT's
  "all-linear" for Llama, which excludes lm_head). AdamW(lr=1e-4) over the LoRA parameters, torch defaults.
bf16 train mode: what a PEFT user does on CPU: base weights in bfloat16 (model.to(torch.bfloat16), as
  from_pretrained(torch_dtype=torch.bfloat16)), LoRA weights in f32 (PEFT's autocast_adapter_dtype=True upcasts
  adapters to f32), activations bf16 (input cast to f32 for the adapter, adapter output cast back), logits upcast
  to f32 for the loss.

FLOP counting ("model_flops_per_token"): the exact matmul FLOPs per token of what the mode executes
  (2 FLOPs per multiply-add), including the lm_head matmul and the attention score/value matmuls over the full
  T x T matrix (the masked eager path computes all of it). Forward: 2*N_mm + attention. LoRA training: forward,
  plus the input gradient through every frozen matmul (2*N_mm), plus input AND weight gradients of the LoRA
  matrices, plus 2x the attention forward for its backward. Generate: per new token, 2*N_mm + attention over the
  average cache length. Also reported for reference: "flops_per_token_6n" = 6 * params_total (the standard
  full-training count) and "flops_per_token_4n" = 4 * params_total (the count bench/train.ts uses for LoRA).
"""

import argparse
import glob
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time


from torch_blas import _fetch_openblas, _mapped_blas, _maybe_reexec_with_openblas  # noqa: E402


if __name__ == "__main__":
    if sys.argv[1:2] == ["fetch-openblas"]:
        _fetch_openblas()
        sys.exit(0)
    # libgomp reads this when torch loads it. The default (spin, then sleep) lets torch's idle OpenMP worker
    # spin against a busy core; on this shared 2-core machine PASSIVE made torch 2-4x faster (forward, train,
    # and decode), so the baseline uses it unless the caller set a policy.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _maybe_reexec_with_openblas(sys.argv)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SHAPES = {
    # Same as bench/shapes.ts.
    "smollm2": dict(vocab=49152, hidden=576, inter=1536, layers=30, heads=9, kv_heads=3, eps=1e-5,
                    theta=100000.0, tied=True),
    "tiny": dict(vocab=8192, hidden=256, inter=704, layers=4, heads=8, kv_heads=4, eps=1e-6,
                 theta=10000.0, tied=False),
}

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


# ----------------------------------------------------------------------------------------------------------
# Model (mirrors transformers.models.llama.modeling_llama)
# ----------------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    def __init__(self, head_dim, theta):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, position_ids):
        # position_ids: (B, T) -> cos, sin: (B, T, head_dim), in x's dtype
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(x, n_rep):
    b, h, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads = c["heads"], c["kv_heads"]
        self.head_dim = c["hidden"] // c["heads"]
        self.n_rep = self.heads // self.kv_heads
        self.q_proj = nn.Linear(c["hidden"], self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c["hidden"], self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c["hidden"], bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:  # DynamicCache-style: concatenate along the sequence
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        k = repeat_kv(k, self.n_rep)
        v = repeat_kv(v, self.n_rep)
        s = k.shape[2]
        if HAS_SDPA:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=(t > 1 and t == s))
            if t > 1 and t != s:
                raise ValueError("chunked prefill with a cache is not supported by this bench")
        else:
            w = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
            if t > 1:
                # causal mask aligned to the end of the key sequence (query i sees keys <= s - t + i)
                mask = torch.full((t, s), torch.finfo(w.dtype).min, dtype=w.dtype)
                mask = torch.triu(mask, diagonal=s - t + 1)
                w = w + mask
            w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(w, v)
        out = out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c["hidden"], c["inter"], bias=False)
        self.up_proj = nn.Linear(c["hidden"], c["inter"], bias=False)
        self.down_proj = nn.Linear(c["inter"], c["hidden"], bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"])

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList([DecoderLayer(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"], c["eps"])
        self.rotary = Rotary(c["hidden"] // c["heads"], c["theta"])
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        self.compute_dtype = torch.float32
        self.apply(self._init)
        if c["tied"]:
            self.lm_head.weight = self.embed_tokens.weight

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, input_ids, position_ids=None, caches=None):
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t).unsqueeze(0).expand(b, t)
        x = self.embed_tokens(input_ids).to(self.compute_dtype)
        cos, sin = self.rotary(x, position_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, caches[i] if caches is not None else None)
        return self.lm_head(self.norm(x))


def causal_lm_loss(logits, labels):
    """transformers' LlamaForCausalLM loss: upcast, shift, mean CE."""
    logits = logits.float()
    shift_logits = logits[:, :-1, :].contiguous()
    shift_labels = labels[:, 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, shift_logits.shape[-1]), shift_labels.view(-1))


# ----------------------------------------------------------------------------------------------------------
# bf16 frozen base, f32 compute (the bitsandbytes-style "store low precision, dequantize per matmul")
# ----------------------------------------------------------------------------------------------------------

class _UpcastLinear(torch.autograd.Function):
    """y = x @ w.float().T with w stored in bf16; backward re-upcasts w instead of keeping an f32 copy alive
    (as bitsandbytes' MatMul4Bit dequantizes in forward and again in backward). No weight gradient."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return F.linear(x, w.float())

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad.matmul(w.float()), None


class FrozenBf16Linear(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return _UpcastLinear.apply(x, self.weight)


def to_bf16_storage(model):
    """Frozen weights of every linear, the embedding and lm_head stored in bf16; norms stay f32; compute f32."""
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                lin = getattr(parent, name, None)
                if isinstance(lin, nn.Linear):
                    setattr(parent, name, FrozenBf16Linear(lin.weight.detach().to(torch.bfloat16)))
    tied = model.lm_head.weight is model.embed_tokens.weight
    emb = nn.Parameter(model.embed_tokens.weight.detach().to(torch.bfloat16), requires_grad=False)
    model.embed_tokens.weight = emb
    model.lm_head = FrozenBf16Linear(emb if tied else model.lm_head.weight.detach().to(torch.bfloat16))
    model.compute_dtype = torch.float32
    return model


# ----------------------------------------------------------------------------------------------------------
# LoRA (PEFT-style)
# ----------------------------------------------------------------------------------------------------------

class LoraLinear(nn.Module):
    def __init__(self, base, r, alpha, adapter_dtype=torch.float32):
        super().__init__()
        self.base_layer = base
        base.weight.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=adapter_dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, dtype=adapter_dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        result = self.base_layer(x)
        dt = result.dtype
        x = x.to(self.lora_A.weight.dtype)  # dropout p=0 -> identity
        return result + (self.lora_B(self.lora_A(x)) * self.scaling).to(dt)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model, r, alpha):
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in LORA_TARGETS:
                if hasattr(parent, name) and isinstance(getattr(parent, name), (nn.Linear, FrozenBf16Linear)):
                    setattr(parent, name, LoraLinear(getattr(parent, name), r, alpha))
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------------------------------------
# FLOP counts
# ----------------------------------------------------------------------------------------------------------

def matmul_params(c):
    """Weights that take part in a matmul per token: the layers' linears plus lm_head (embedding is a gather)."""
    d, hd = c["hidden"], c["hidden"] // c["heads"]
    attn = d * c["heads"] * hd + 2 * d * c["kv_heads"] * hd + c["heads"] * hd * d
    mlp = 3 * d * c["inter"]
    return c["layers"] * (attn + mlp) + d * c["vocab"]


def attn_flops_fwd(c, ctx):
    """QK^T and PV per token over `ctx` keys: 2 matmuls x 2 FLOPs x ctx x head_dim x heads, per layer."""
    return c["layers"] * 4 * ctx * c["hidden"]


def lora_params_per_token(c, r):
    d, hd = c["hidden"], c["hidden"] // c["heads"]
    shapes = [(d, c["heads"] * hd), (d, c["kv_heads"] * hd), (d, c["kv_heads"] * hd), (c["heads"] * hd, d),
              (d, c["inter"]), (d, c["inter"]), (c["inter"], d)]
    return c["layers"] * sum(r * (i + o) for i, o in shapes)


# ----------------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------------

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_params(model):
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def timed_loop(fn, iters, seconds, max_iters=50):
    """Warm-up 1, then run `iters` iterations if given, else until `seconds` have passed (at least 3, or at
    least 1 when the warm-up alone took over max(`seconds`, 60 s))."""
    t = time.perf_counter()
    fn()
    min_iters = 3 if time.perf_counter() - t < max(seconds, 60.0) else 1
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if iters is not None:
            if len(times) >= iters:
                break
        elif (time.perf_counter() - start >= seconds and len(times) >= min_iters) or len(times) >= max_iters:
            break
    return times


def mode_forward(c, args):
    B, T = 4, 256
    model = LlamaForCausalLM(c).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, c["vocab"], (B, T), generator=g)

    def step():
        with torch.no_grad():
            return causal_lm_loss(model(ids), ids).item()

    times = timed_loop(step, args.iters, args.seconds)
    med = statistics.median(times)
    return dict(
        tokens_per_second=B * T / med, seconds=sum(times), iterations=len(times), median_step_s=med,
        best_tokens_per_second=B * T / min(times),
        params_total=count_params(model), params_trainable=0,
        model_flops_per_token=2 * matmul_params(c) + attn_flops_fwd(c, T),
        flops_per_token_2n=2 * count_params(model),
        batch=[B, T], dtype="f32",
        what="no_grad forward + lm_head logits (full, f32) + shifted mean CE, as LlamaForCausalLM(labels=...)",
    )


def mode_generate(c, args):
    P, N = args.prompt, args.new
    model = LlamaForCausalLM(c).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, c["vocab"], (1, P), generator=g)

    def gen():
        caches = [dict() for _ in range(c["layers"])]
        out = []
        with torch.no_grad():
            t0 = time.perf_counter()
            logits = model(prompt, caches=caches)
            nxt = logits[:, -1, :].argmax(-1, keepdim=True)
            t_prefill = time.perf_counter() - t0
            out.append(nxt)
            pos = P
            while len(out) < N:
                logits = model(nxt, position_ids=torch.tensor([[pos]]), caches=caches)
                nxt = logits[:, -1, :].argmax(-1, keepdim=True)
                out.append(nxt)
                pos += 1
            total = time.perf_counter() - t0
        return total, t_prefill

    gen()  # warm-up
    runs = []
    start = time.perf_counter()
    iters = args.iters if args.iters is not None else 50
    while len(runs) < iters:
        runs.append(gen())
        if args.iters is None and time.perf_counter() - start >= args.seconds and len(runs) >= 3:
            break
    totals = [r[0] for r in runs]
    med = statistics.median(totals)
    dec = statistics.median([(r[0] - r[1]) for r in runs])
    avg_ctx = P + (N - 1) / 2
    return dict(
        tokens_per_second=N / med, decode_tokens_per_second=(N - 1) / dec,
        seconds=sum(totals), iterations=len(runs), median_generate_s=med,
        params_total=count_params(model), params_trainable=0,
        model_flops_per_token=2 * matmul_params(c) + attn_flops_fwd(c, avg_ctx),
        prompt_tokens=P, new_tokens=N, batch=1, dtype="f32",
        what="greedy, KV cache (torch.cat per step, like DynamicCache); tokens_per_second = new tokens / "
             "(prefill + all decode steps); decode_tokens_per_second excludes the prefill",
    )


def mode_train(c, args):
    B, T, r, alpha = 4, 256, 8, 16
    model = LlamaForCausalLM(c)
    if args.dtype == "bf16" and args.bf16_scheme == "upcast":
        model = to_bf16_storage(model)
    elif args.dtype == "bf16":
        model = model.to(torch.bfloat16)  # PEFT on from_pretrained(torch_dtype=bf16); LoRA below stays f32
        model.compute_dtype = torch.bfloat16
    trainable = apply_lora(model, r, alpha)
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, c["vocab"], (B, T), generator=g)
    losses = []

    def step():
        loss = causal_lm_loss(model(ids), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    times = timed_loop(step, args.iters, args.seconds)
    med = statistics.median(times)
    n_mm = matmul_params(c)
    n_lora = lora_params_per_token(c, r)
    total = count_params(model)
    flops = (2 * n_mm + 2 * n_mm          # forward + input-grad through frozen matmuls (incl. lm_head)
             + 3 * 2 * n_lora               # LoRA forward, input grad, weight grad
             + 3 * attn_flops_fwd(c, T))    # attention forward + backward (2x)
    res = dict(
        tokens_per_second=B * T / med, seconds=sum(times), iterations=len(times), median_step_s=med,
        best_tokens_per_second=B * T / min(times),
        params_total=total, params_trainable=sum(p.numel() for p in trainable),
        model_flops_per_token=flops, flops_per_token_6n=6 * total, flops_per_token_4n=4 * total,
        batch=[B, T], dtype=args.dtype, lora=dict(r=r, alpha=alpha, targets=list(LORA_TARGETS), dropout=0.0),
        first_loss=losses[0], last_loss=losses[-1],
        what="LoRA training step: forward + shifted mean CE + backward + AdamW(lr=1e-4) step + zero_grad",
    )
    if args.dtype == "bf16" and args.bf16_scheme == "upcast":
        res["bf16_scheme"] = ("upcast: frozen base weights (linears, embedding, lm_head) stored bfloat16 and "
                              "upcast to f32 per matmul in forward and again in backward (custom autograd "
                              "Function, no f32 copy kept); norms, activations and LoRA A/B f32")
    elif args.dtype == "bf16":
        res["bf16_scheme"] = ("native: model.to(bf16) (as from_pretrained(torch_dtype=bf16)), LoRA A/B f32 (PEFT "
                              "autocast_adapter_dtype), activations bf16, logits upcast to f32 for the loss")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["forward", "generate", "train"])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--bf16-scheme", choices=["upcast", "native"], default="upcast",
                    help="train --dtype bf16: upcast (bf16 storage, f32 matmuls; default) or native (bf16 matmuls)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default: until --seconds)")
    ap.add_argument("--seconds", type=float, default=30.0, help="target timed seconds when --iters is not given")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas", choices=["auto", "system"], default="auto",
                    help="auto: run torch on OpenBLAS when the system libblas.so.3 is the reference BLAS")
    ap.add_argument("--json", action="store_true", help="accepted for compatibility; output is always JSON")
    args = ap.parse_args()
    if args.mode != "train" and args.dtype != "f32":
        ap.error("--dtype bf16 is only supported by the train mode")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    c = SHAPES[args.shape]
    t0 = time.perf_counter()
    res = {"forward": mode_forward, "generate": mode_generate, "train": mode_train}[args.mode](c, args)
    out = dict(mode=args.mode, shape=args.shape, torch_version=torch.__version__, threads=torch.get_num_threads(),
               python=platform.python_version(), attention="sdpa(is_causal)" if HAS_SDPA else "eager masked softmax")
    out.update(res)
    out["peak_rss_mb"] = peak_rss_mb()
    out["wall_seconds"] = time.perf_counter() - t0
    out["achieved_gflops"] = out["tokens_per_second"] * out["model_flops_per_token"] / 1e9
    out["blas"], out["blas_kind"] = _mapped_blas()
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                                      "OPENBLAS_L2_SIZE", "LD_LIBRARY_PATH") if k in os.environ}
    if env:
        out["env"] = env
    notes = []
    if out["blas_kind"] != "openblas":
        notes.append("torch ran on %s, not OpenBLAS: matmuls are far slower than a normal PyTorch install; run "
                     "`/usr/bin/python3 bench/torch_llama.py fetch-openblas` or install libopenblas0-openmp"
                     % out["blas_kind"])
    if args.mode == "train" and args.dtype == "bf16" and args.bf16_scheme == "native":
        notes.append("CPU has no bf16 instructions (AVX2 only) and torch 1.13 runs CPU bf16 matmuls in a scalar "
                     "fallback (~0.75 GFLOP/s here against ~35-150 for f32 OpenBLAS): this is what loading in bf16 "
                     "gets, absurdly slow; a smollm2 step takes >10 minutes")
    elif args.mode == "train" and args.dtype == "bf16":
        notes.append("bf16 storage with f32 compute, chosen because torch 1.13's CPU bf16 matmul is a scalar "
                     "fallback (~0.75 GFLOP/s here; see --bf16-scheme native)")
    if notes:
        out["note"] = "; ".join(notes)
    sys.stdout.flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
