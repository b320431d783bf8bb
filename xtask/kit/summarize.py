#!/usr/bin/env python3
"""Merges the Rust benches' and PyTorch's JSON lines into one side-by-side table.

usage: summarize.py OUT_DIR   (reads OUT_DIR/bench.jsonl and OUT_DIR/torch.jsonl,
writes OUT_DIR/table.md and prints it)
"""
import json
import os
import sys


def load(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    return rows


def main():
    out = sys.argv[1]
    rows = load(os.path.join(out, "bench.jsonl")) + load(os.path.join(out, "torch.jsonl"))
    peaks = next((r for r in rows if "peak_flops" in r), None)
    lines = ["| family | case | variant | time (us) | TFLOP/s | GB/s | of floor |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["case"], r["variant"])):
        s = r["seconds"]
        floor = ""
        if peaks:
            fl = max(r["flops"] / peaks["peak_flops"], r["min_bytes"] / peaks["peak_bytes"])
            floor = f"{100 * fl / s:.0f}%"
        tf = f"{r['flops'] / s / 1e12:.1f}" if r["flops"] else ""
        gb = f"{r['min_bytes'] / s / 1e9:.0f}"
        lines.append(f"| {r['family']} | {r['case']} | {r['variant']} | {s * 1e6:.1f} | {tf} | {gb} | {floor} |")
    if peaks:
        lines.append("")
        lines.append(f"Measured peaks: cuBLAS bf16 {peaks['peak_flops'] / 1e12:.1f} TFLOP/s, "
                     f"device copy {peaks['peak_bytes'] / 1e9:.0f} GB/s.")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
