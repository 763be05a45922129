"""llama.cpp and exoquic on the same GGUF file, in the same run.

    uv run python tools/bench_llamacpp.py FILE.gguf [--engine tinygrad] [--threads N]
    uv run python tools/bench_llamacpp.py --shape llama-3.2-1b --mix q4_k_m

With `--shape`, the file is a real-shape GGUF with random blocks made by
`gen_gguf.py` (kept in ~/.cache/exoquic-bench/gguf/). llama.cpp comes from
llama-cpp-python, which this tool installs into its own environment on first
use (see llamacpp_env.py); exoquic never depends on it.

Each engine runs in its own process, one after the other, with the same
token ids, thread count and context size, and reports:

- load: opening the file until the engine is ready (exoquic: reading the
  shard and loading it into the engine);
- TTFT: prefill of a `--prompt-tokens` (128) prompt on a fresh request until
  its logits are out, median over `--repeats` after `--warmup` rounds;
- prefill: tokens per second for a `--prefill-tokens` (512) prompt;
- decode: greedy tokens per second over `--decode-tokens` steps after the
  128-token prompt;
- peak RSS of the process.

The token ids come from the bundled SmolLM2 tokenizer (English text); they are
valid ids for every generated file, whose weights are noise anyway.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path.home() / ".cache" / "exoquic-bench" / "gguf"
TEXT = (
    "Write a detailed report about the history of the printing press, its inventors, "
    "how it spread across Europe, and the effect it had on science, religion and politics. "
)


def prompt_ids(count: int) -> list[int]:
    """`count` token ids of English text from the bundled tokenizer."""
    from exoquic.models.registry import bundled_gguf_path
    from exoquic.models.tokenizer import Tokenizer

    ids = Tokenizer.from_gguf(bundled_gguf_path()).encode(TEXT * (count // 20 + 1))
    if len(ids) < count:
        raise ValueError(f"the text gives only {len(ids)} tokens, {count} wanted")
    return ids[:count]


def measure_exoquic(request: dict[str, Any]) -> dict[str, Any]:
    """The exoquic side (in a child process): the same measurements as llamacpp_worker.bench."""
    from exoquic.engines.registry import create_engine
    from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
    from exoquic.models.shard import Shard

    started = time.perf_counter()
    config = read_gguf_config(request["path"])
    engine = create_engine(request["engine"], max_context=request["max_context"])
    if request["threads"] and hasattr(engine, "threads"):
        engine.threads = request["threads"]
    engine.load(load_gguf_shard(request["path"], Shard.whole("bench", config.num_layers)))
    load_s = time.perf_counter() - started
    short = np.array(request["prompt"], np.int32)
    long_ = np.array(request["prefill"], np.int32)
    ttfts, prefills, decodes = [], [], []
    for round_ in range(request["warmup"] + request["repeats"]):
        t0 = time.perf_counter()
        token = int(np.argmax(engine.forward(f"s{round_}", short)))
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(request["decode_tokens"]):
            token = int(np.argmax(engine.forward(f"s{round_}", np.array([token], np.int32))))
        decode = request["decode_tokens"] / (time.perf_counter() - t0)
        engine.release(f"s{round_}")
        t0 = time.perf_counter()
        engine.forward(f"l{round_}", long_)
        prefill = len(long_) / (time.perf_counter() - t0)
        engine.release(f"l{round_}")
        if round_ >= request["warmup"]:
            ttfts.append(ttft)
            decodes.append(decode)
            prefills.append(prefill)
    return {
        "engine": f"exoquic {request['engine']}",
        "load_s": round(load_s, 2),
        "ttft_s": round(statistics.median(ttfts), 3),
        "prefill_tok_s": round(statistics.median(prefills), 1),
        "decode_tok_s": round(statistics.median(decodes), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_exoquic(request: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"engine": f"exoquic {request['engine']}", "error": done.stderr.strip()[-800:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_llama_cpp(request: dict[str, Any]) -> dict[str, Any]:
    from llamacpp_env import run_worker

    try:
        return run_worker("bench", request)
    except RuntimeError as e:
        return {"engine": "llama.cpp", "error": str(e)[-800:]}


def model_file(args: argparse.Namespace) -> Path:
    """The GGUF to measure: the one given, or a generated real-shape file (made once)."""
    if args.file is not None:
        return Path(args.file)
    if args.shape is None:
        raise SystemExit("give a GGUF file or --shape")
    from gen_gguf import generate

    path = CACHE / f"{args.shape}-{args.mix}.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {path}", file=sys.stderr)
        partial = path.with_suffix(".partial")
        generate(args.shape, args.mix, partial)
        partial.rename(path)
    return path


def report(results: list[dict[str, Any]]) -> None:
    print(f"{'engine':>18} | load s | TTFT ms | prefill tok/s | decode tok/s | peak RSS MiB")
    for r in results:
        if "error" in r:
            print(f"{r['engine']:>18} | failed: {r['error']}")
            continue
        print(
            f"{r['engine']:>18} | {r['load_s']:6.1f} | {r['ttft_s'] * 1000:7.0f} | "
            f"{r['prefill_tok_s']:13.1f} | {r['decode_tok_s']:12.2f} | {r['peak_rss_mib']:12.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", help="a GGUF file")
    parser.add_argument("--shape", help="generate a real-shape file (see gen_gguf.py --list)")
    parser.add_argument("--mix", default="q4_k_m", help="quantization mix for --shape")
    parser.add_argument("--engine", default="tinygrad", help="exoquic engine (tinygrad, mlx)")
    parser.add_argument("--only", choices=("llama.cpp", "exoquic"), help="run one side only")
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0: defaults)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_exoquic(json.loads(sys.stdin.read()))))
        return
    path = model_file(args)
    request = {
        "path": str(path),
        "engine": args.engine,
        "threads": args.threads,
        "max_context": args.max_context,
        "prompt": prompt_ids(args.prompt_tokens),
        "prefill": prompt_ids(args.prefill_tokens),
        "decode_tokens": args.decode_tokens,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    print(f"{path.name} ({path.stat().st_size / 2**30:.2f} GiB)")
    results = []
    if args.only != "exoquic":
        results.append(run_llama_cpp(request))
    if args.only != "llama.cpp":
        results.append(run_exoquic(request))
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"file": str(path), "results": results}, indent=2))


if __name__ == "__main__":
    main()
