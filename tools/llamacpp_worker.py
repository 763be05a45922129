"""The llama.cpp side of the comparison tools; runs in the bench environment only.

    python llamacpp_worker.py bench|logits|quantize < request.json

It imports llama-cpp-python and numpy, never exoquic (see llamacpp_env.py),
reads one JSON request on stdin and prints one JSON answer line:

- bench: load time, time to first token for a prompt, prefill rate for a
  longer prompt, greedy decode rate, peak RSS;
- logits: teacher-forced top-1 token ids after every position of a text;
- quantize: `llama_model_quantize` of a GGUF into another type
  (`allow_requantize`, so an already quantized file works too).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from typing import Any

import llama_cpp
import numpy as np

FILE_TYPES = {
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "iq4_xs": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_XS,
    "iq4_nl": llama_cpp.LLAMA_FTYPE_MOSTLY_IQ4_NL,
}


def open_model(path: str, n_ctx: int, threads: int, logits_all: bool = False) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=threads or None,
        n_threads_batch=threads or None,
        logits_all=logits_all,
        verbose=False,
    )


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def bench(request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    llm = open_model(request["path"], request["max_context"], request["threads"])
    load_s = time.perf_counter() - started
    short, long_ = request["prompt"], request["prefill"]
    ttfts, prefills, decodes = [], [], []
    for round_ in range(request["warmup"] + request["repeats"]):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(short)
        token = int(np.argmax(last_logits(llm)))
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(request["decode_tokens"]):
            llm.eval([token])
            token = int(np.argmax(last_logits(llm)))
        decode = request["decode_tokens"] / (time.perf_counter() - t0)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(long_)
        last_logits(llm)
        prefill = len(long_) / (time.perf_counter() - t0)
        if round_ >= request["warmup"]:
            ttfts.append(ttft)
            decodes.append(decode)
            prefills.append(prefill)
    return {
        "engine": "llama.cpp",
        "version": llama_cpp.__version__,
        "load_s": round(load_s, 2),
        "ttft_s": round(statistics.median(ttfts), 3),
        "prefill_tok_s": round(statistics.median(prefills), 1),
        "decode_tok_s": round(statistics.median(decodes), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def logits(request: dict[str, Any]) -> dict[str, Any]:
    tokens = request["tokens"]
    llm = open_model(request["path"], len(tokens) + 8, request.get("threads", 0), logits_all=True)
    llm.eval(tokens)
    scores = np.asarray(llm.scores[: len(tokens)])
    return {"top1": [int(i) for i in scores.argmax(axis=1)]}


def quantize(request: dict[str, Any]) -> dict[str, Any]:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[request["mix"]]
    params.allow_requantize = True
    params.nthread = request.get("threads", 0)
    status = llama_cpp.llama_model_quantize(
        request["source"].encode(), request["out"].encode(), params
    )
    if status != 0:
        raise SystemExit(f"llama_model_quantize failed with {status}")
    return {"out": request["out"]}


def main() -> None:
    command = sys.argv[1]
    handlers = {"bench": bench, "logits": logits, "quantize": quantize}
    if command not in handlers:
        raise SystemExit(f"unknown command {command!r} (one of {', '.join(handlers)})")
    print(json.dumps(handlers[command](json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
