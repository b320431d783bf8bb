#!/usr/bin/env python3
"""PyTorch baselines for the same cases as the Rust benches, on a CUDA GPU.

- dense:     torch.nn.functional.linear(x, w), d -> d
- unfused:   the official Pattention formula (GPT-NeoX TokenFormer code):
             A = x @ k_p.T; S = norm(A); y = S @ v_p  (scores in global memory)
- attention: scaled_dot_product_attention with the flash backend
- grow:      torch.cat((old, new_rows)) per tensor, for a 1.5B model's tokens

Writes one JSON line per case to the file given as the first argument (same
fields as the Rust benches' TF_BENCH_JSON). Timing: CUDA events around warmed-up
repeats, median of 7 samples. TF_BENCH_SET=quick selects the device kit's set.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

QUICK = os.environ.get("TF_BENCH_SET") == "quick"


def median_time(fn, per=3, reps=7):
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / per)
    samples.sort()
    return samples[len(samples) // 2]


def norm_official(a, norm):
    n = a.shape[-1]
    if norm == "l2_norm_gelu":
        return F.gelu(a / torch.norm(a, p=2, dim=-1, keepdim=True) * math.sqrt(n))
    if norm == "gelu_l2_norm":
        g = F.gelu(a)
        return g / torch.norm(g, p=2, dim=-1, keepdim=True) * math.sqrt(n)
    return torch.softmax(a, dim=-1) * n


def emit(out, family, case, variant, flops, min_bytes, seconds):
    out.write(json.dumps(dict(family=family, case=case, variant=variant, flops=flops,
                              min_bytes=min_bytes, seconds=seconds, source="torch")) + "\n")
    out.flush()
    rate = f"{flops / seconds / 1e12:.1f} TFLOP/s" if flops else f"{min_bytes / seconds / 1e9:.0f} GB/s"
    print(f"torch {family:<10} {case:<40} {variant:<22} {seconds * 1e6:9.1f} us  {rate}")


def pattention_cases(out):
    ds = [1024, 1536] if QUICK else [768, 1024, 1280, 1536]
    ts = [16384] if QUICK else [4096, 16384]
    for d in ds:
        for n in (d // 2, d, 4 * d):
            for t in ts:
                sweep = [("l2_norm_gelu", torch.bfloat16)]
                if not QUICK or (d == 1024 and n == d):
                    sweep += [("gelu_l2_norm", torch.bfloat16), ("softmax", torch.bfloat16),
                              ("l2_norm_gelu", torch.float16)]
                for norm, dt in sweep:
                    name = "bf16" if dt == torch.bfloat16 else "f16"
                    x = torch.empty(t, d, device="cuda", dtype=dt).uniform_(-1, 1)
                    k_p = torch.empty(n, d, device="cuda", dtype=dt).uniform_(-0.05, 0.05)
                    v_p = torch.empty(n, d, device="cuda", dtype=dt).uniform_(-0.05, 0.05)
                    w = torch.empty(d, d, device="cuda", dtype=dt).uniform_(-0.05, 0.05)
                    flops = 4.0 * t * d * n
                    el = x.element_size()
                    case = f"{name}/{norm}/d{d}_n{n}_t{t}"
                    s = median_time(lambda: norm_official(x @ k_p.T, norm) @ v_p)
                    emit(out, "pattention", case, "torch unfused", flops, el * (2 * t * d + 2 * n * d), s)
                    s = median_time(lambda: F.linear(x, w))
                    emit(out, "pattention", case, "torch dense dxd", 2.0 * t * d * d, el * (2 * t * d + d * d), s)


def attention_cases(out):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    hds = [64, 128] if QUICK else [64, 80, 96, 128]
    seqs = [1024, 4096, 16384] if QUICK else [1024, 2048, 4096, 8192, 16384]
    for hd in hds:
        for seq in seqs:
            for causal in (False, True):
                heads, batch = 2048 // hd, max(1, 16384 // seq)
                q, k, v = (torch.empty(batch, heads, seq, hd, device="cuda", dtype=torch.bfloat16).uniform_(-1, 1)
                           for _ in range(3))
                flops = 4.0 * batch * heads * seq * seq * hd / (2 if causal else 1)
                case = f"bf16/hd{hd}_s{seq}_b{batch}_h{heads}_{'causal' if causal else 'full'}"
                try:
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        s = median_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                except RuntimeError as e:  # the flash backend rejects some head dims
                    print(f"torch attention {case}: flash backend refused ({e})")
                    continue
                emit(out, "attention", case, "torch sdpa flash", flops, 2.0 * 4 * q.numel(), s)


def grow_cases(out):
    d, layers = 1536, 40
    slots = [1536, 1536, 1536, 1536, 6144]
    olds = [torch.empty(s, d, device="cuda", dtype=torch.bfloat16).uniform_(-0.02, 0.02)
            for _ in range(layers) for s in slots for _ in range(2)]
    news = [torch.zeros(o.shape[0] // 4, d, device="cuda", dtype=torch.bfloat16) for o in olds]
    old_b = sum(o.numel() * 2 for o in olds)
    new_b = sum(n.numel() * 2 for n in news)
    s = median_time(lambda: [torch.cat((o, n)) for o, n in zip(olds, news)])
    emit(out, "grow", "bf16/1.5b_x1.25", "torch cat", 0.0, 2.0 * old_b + new_b, s)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: torch_baseline.py OUT.jsonl")
    if not torch.cuda.is_available():
        sys.exit("torch_baseline: no CUDA device visible to PyTorch")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    with open(sys.argv[1], "a") as out:
        pattention_cases(out)
        attention_cases(out)
        grow_cases(out)


if __name__ == "__main__":
    main()
