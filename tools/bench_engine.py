"""Benchmark one inference engine on the default model, on this machine.

    uv run python tools/bench_engine.py tinygrad|mlx|all [--prompt-tokens 128]
        [--decode-tokens 128] [--max-context 2048] [--repeats 3] [--json FILE]

Each engine runs in its own process (so peak memory and cold start are its
own) and reports:

- cold start: loading the GGUF shard and the engine's weights, then the first
  prefill of the prompt (kernel compilation and tracing included);
- TTFT: prefill of the prompt on a fresh request once warm (median of
  `--repeats`), and the prefill rate it implies;
- decode: tokens per second over `--decode-tokens` greedy steps (argmax of the
  returned logits, end tokens ignored), median of the repeats;
- peak RSS of the process;
- CPU seconds per decoded token (all threads of the process): on a busy
  machine, `1 / decode_cpu_s_per_token` with `--threads 1` estimates the
  rate the same code reaches on an idle one.

Engines are made with `exoquic.engines.registry.create_engine`, so any engine
registered there can be named.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

MODEL = "smollm2-135m-instruct"
TEXT = (
    "Write a detailed report about the history of the printing press, its inventors, "
    "how it spread across Europe, and the effect it had on science, religion and politics. "
)


def prompt_tokens(count: int) -> np.ndarray:
    """`count` token ids of a chat-formatted English prompt (the text repeated to length)."""
    from exoquic.models.registry import bundled_gguf_path
    from exoquic.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(bundled_gguf_path(MODEL))
    text = tokenizer.apply_chat_template([{"role": "user", "content": TEXT * 20}])
    ids = tokenizer.encode(text)
    return np.array(ids[:count], np.int32)


def measure(engine_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark in this process (the child)."""
    from exoquic.engines.registry import create_engine
    from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
    from exoquic.models.registry import bundled_gguf_path
    from exoquic.models.shard import Shard

    prompt = prompt_tokens(args.prompt_tokens)
    started = time.perf_counter()
    path = bundled_gguf_path(MODEL)
    config = read_gguf_config(path)
    engine = create_engine(engine_name, max_context=args.max_context)
    if args.threads and hasattr(engine, "threads"):
        engine.threads = args.threads
    engine.load(load_gguf_shard(path, Shard.whole(MODEL, config.num_layers)))
    loaded = time.perf_counter()
    engine.forward("cold", prompt)
    cold = time.perf_counter()
    engine.release("cold")

    ttfts, rates, cpu_per_token = [], [], []
    for i in range(args.repeats + 2):  # two warm-up rounds: compilation and tracing
        rid = f"r{i}"
        t0 = time.perf_counter()
        logits = engine.forward(rid, prompt)
        ttft = time.perf_counter() - t0
        token = int(np.argmax(logits))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.decode_tokens):
            token = int(np.argmax(engine.forward(rid, np.array([token], np.int32))))
        rate = args.decode_tokens / (time.perf_counter() - t0)
        cpu = (time.process_time() - c0) / args.decode_tokens
        engine.release(rid)
        if i >= 2:
            ttfts.append(ttft)
            rates.append(rate)
            cpu_per_token.append(cpu)
    ttft = statistics.median(ttfts)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "engine": engine_name,
        "load_s": round(loaded - started, 2),
        "cold_start_s": round(cold - started, 2),
        "ttft_s": round(ttft, 3),
        "prefill_tok_s": round(len(prompt) / ttft, 1),
        "decode_tok_s": round(statistics.median(rates), 1),
        "decode_tok_s_all": [round(r, 1) for r in rates],
        "decode_cpu_s_per_token": round(statistics.median(cpu_per_token), 4),
        "threads": getattr(engine, "threads", None),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "prompt_tokens": len(prompt),
        "decode_tokens": args.decode_tokens,
    }


def run_child(engine_name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, engine_name, "--child"]
    command += [
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--decode-tokens",
        str(args.decode_tokens),
    ]
    command += ["--max-context", str(args.max_context), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"engine": engine_name, "error": done.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engine", help="tinygrad, mlx or all")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: its default)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.engine, args)))
        return
    from exoquic.engines.registry import engine_names

    names = list(engine_names()) if args.engine == "all" else [args.engine]
    results = [run_child(name, args) for name in names]
    for r in results:
        if "error" in r:
            print(f"{r['engine']:>9}: failed: {r['error']}")
            continue
        print(
            f"{r['engine']:>9}: decode {r['decode_tok_s']:6.1f} tok/s | "
            f"TTFT {r['ttft_s'] * 1000:7.1f} ms ({r['prompt_tokens']} tokens, "
            f"{r['prefill_tok_s']:.0f} tok/s) | cold start {r['cold_start_s']:.1f} s "
            f"(load {r['load_s']:.1f} s) | peak RSS {r['peak_rss_mib']:.0f} MiB | "
            f"{r['decode_cpu_s_per_token'] * 1000:.1f} CPU ms/token ({r['threads']} threads)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
