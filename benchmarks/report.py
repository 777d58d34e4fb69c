"""Render a bench JSON (autotune bench --out) as a Markdown table: `python3 benchmarks/report.py FILE`."""

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    p = data["provenance"]
    print(f"{p['gpu']}, torch {p['torch']}, triton {p['triton']}, commit {p['commit'][:7]}, {p['date'][:10]}; "
          f"grid {p['grid']}, {p['dtype']}, do_bench rep {p['rep_ms']} ms\n")
    print("| B | H | S | D | causal | source | tuned µs | tuned TF/s | flash TF/s | cuDNN TF/s | efficient TF/s "
          "| best SDPA / tuned | flash / tuned |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda x, n=1: "-" if x is None else f"{x:.{n}f}"  # noqa: E731
    for r in data["points"]:
        print(f"| {r['batch']} | {r['heads']} | {r['seq_len']} | {r['head_dim']} | {'yes' if r['causal'] else 'no'} "
              f"| {r['source']} | {f(r['tuned_us'])} | {f(r['tuned_tflops'], 0)} | {f(r['flash_tflops'], 0)} "
              f"| {f(r['cudnn_tflops'], 0)} | {f(r['efficient_tflops'], 0)} | {f(r['best_sdpa_over_tuned'], 2)} "
              f"| {f(r['flash_over_tuned'], 2)} |")
    s = data["summary"]
    print(f"\nGeometric means over {s['points']} points: best SDPA / tuned **{s['geomean_best_sdpa_over_tuned']:.3f}**, "
          f"flash / tuned **{s['geomean_flash_over_tuned']:.3f}**; max tuned relative error "
          f"{s['max_tuned_rel_err']:.2e}.")


if __name__ == "__main__":
    main(sys.argv[1])
