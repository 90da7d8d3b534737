#!/usr/bin/env python3
"""hf-peer.py - the peer of bench-gpu's whole-model rows: Hugging Face transformers on the same GPU.

A Llama-2-7B-shaped LlamaForCausalLM (hidden 4096, intermediate 11008, 32 layers, 32 heads,
vocab 32000) with random weights made on the GPU in bf16; per attention implementation (eager,
as issue 8 measured it, and sdpa):
  decode: generate() of 1 and of 65 new tokens after a 16-token prompt (greedy, no EOS stop);
          ms/token = (t65 - t1) / 64, medians of 3;
  prefill: one forward of 2048 tokens, median of 3.
Prints one line per implementation and a final JSON line. Written 2026-12-05 without a GPU and
not yet run (docs/GPU.md); bench/gpu-compare.sh runs it when torch and transformers import.
"""
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def timed(fn, reps=3):
    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    if not torch.cuda.is_available():
        print("hf-peer: skipped: torch sees no CUDA device")
        return 77
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model = model.to(torch.bfloat16).eval()
    torch.cuda.synchronize()
    print(f"hf-peer: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0)}; model made in {time.perf_counter() - t0:.1f} s",
          flush=True)
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), device="cuda")
    long_prompt = torch.randint(0, cfg.vocab_size, (1, 2048), device="cuda")
    results = {}
    for impl in ("eager", "sdpa"):
        try:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(impl)
            else:
                model.config._attn_implementation = impl
        except Exception as e:  # an implementation this version lacks: report and go on
            print(f"hf-peer: {impl}: cannot select it ({e})")
            continue

        def gen(n):
            with torch.no_grad():
                model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)

        def prefill():
            with torch.no_grad():
                model(long_prompt, use_cache=False)

        gen(2)  # warm-up
        t1, t65 = timed(lambda: gen(1)), timed(lambda: gen(65))
        ms_tok = (t65 - t1) / 64 * 1e3
        prefill()
        tp = timed(prefill)
        results[impl] = {"decode_ms_per_token": round(ms_tok, 3),
                         "prefill_2048_ms": round(tp * 1e3, 2)}
        print(f"hf-peer: bf16 {impl}: decode {ms_tok:.2f} ms/token, prefill 2048 tokens "
              f"{tp * 1e3:.1f} ms", flush=True)
    print("hf-peer-json: " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
