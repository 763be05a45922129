"""Re-quantize the bundled SmolLM2 and measure exoquic's agreement with llama.cpp.

    uv run python tools/requantize_smollm2.py [--mixes q4_k_m,q5_k_m,q6_k,q8_0]
        [--engine tinygrad] [--out-dir DIR] [--json FILE]

For each mix, llama.cpp's own quantizer (`llama_model_quantize` with
`allow_requantize`, through llama-cpp-python in the bench environment, see
llamacpp_env.py) turns the bundled Q4_1 file into that mix, in seconds. Rows
of 576 values are not whole 256-value super-blocks, so these files mix in
llama.cpp's fallbacks (Q5_0 / Q5_1 / Q8_0) as real small models do.

Then both engines read the same fixed text (`TEXT`, over 256 tokens),
teacher-forced: after every position each picks its most likely next token,
and the figure is the fraction of positions where the two picks agree.
llama.cpp runs the text as one batch; exoquic feeds it one token at a time
(its decode path). Files go to ~/.cache/exoquic-bench/smollm2 by default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "engines" / "reference.py"
OUT_DIR = Path.home() / ".cache" / "exoquic-bench" / "smollm2"
MIXES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")
TEXT = """\
The printing press changed the way knowledge moved through Europe. Before it, a book was copied
by hand, one page at a time, and a single Bible could take a scribe more than a year. Around 1440
Johannes Gutenberg, a goldsmith from Mainz, combined several older ideas into one machine: metal
type cast in a hand mould, an oil-based ink that clung to metal, and a screw press adapted from
the presses used to make wine and paper. The result could print thousands of pages a day.

Within fifty years there were printing shops in more than two hundred cities. Venice became a
centre of the trade, and printers such as Aldus Manutius produced small, cheap editions of the
classics that students could carry in a pocket. Prices fell, and more people learned to read.
Scholars could now compare identical copies of a text, point to the same page, and correct
errors in later editions, which made careful scientific work much easier.

The press also carried arguments. When Martin Luther wrote his theses in 1517, printed copies
spread across Germany in weeks. Pamphlets, broadsheets and later newspapers gave ordinary people
news and opinions that had once belonged to courts and monasteries. Governments and churches
answered with licences and censorship, but they could never again fully control what was read.
Historians still argue about how much the press caused and how much it merely sped up, yet few
doubt that the modern world of science, religion and politics was shaped by cheap printed words.
"""


def quantize(mix: str, out_dir: Path) -> Path:
    """The bundled model re-quantized to `mix` by llama.cpp (made once)."""
    from llamacpp_env import run_worker

    from exoquic.models.registry import bundled_gguf_path

    out = out_dir / f"smollm2-135m-instruct-{mix}.gguf"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        run_worker(
            "quantize", {"source": str(bundled_gguf_path()), "out": str(partial), "mix": mix}
        )
        partial.rename(out)
    return out


def text_tokens(path: Path) -> list[int]:
    from exoquic.models.tokenizer import Tokenizer

    return Tokenizer.from_gguf(path).encode(TEXT)


def exoquic_top1(path: Path, tokens: list[int], engine_name: str) -> list[int]:
    """exoquic's most likely next token after each position, one decode step at a time."""
    from exoquic.engines.registry import create_engine
    from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
    from exoquic.models.shard import Shard

    config = read_gguf_config(path)
    engine = create_engine(engine_name, max_context=len(tokens) + 8)
    engine.load(load_gguf_shard(path, Shard.whole("agreement", config.num_layers)))
    picks = []
    for token in tokens:
        logits = engine.forward("text", np.array([token], np.int32))
        picks.append(int(np.argmax(logits)))
    engine.release("text")
    return picks


def reference_top1(path: Path, tokens: list[int]) -> list[int]:
    """Top-1 picks of the tests' float64 forward pass (exact weights, exact activations)."""
    spec = importlib.util.spec_from_file_location("reference", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
    from exoquic.models.shard import Shard

    config = read_gguf_config(path)
    weights = load_gguf_shard(path, Shard.whole("reference", config.num_layers))
    logits = module.reference_forward(weights, np.array(tokens, np.int32))
    return [int(i) for i in logits.argmax(axis=1)]


def _share(a: list[int], b: list[int]) -> float:
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / len(a), 4)


def agreement(path: Path, engine_name: str, reference: bool = False) -> dict[str, Any]:
    """Teacher-forced top-1 agreement of exoquic with llama.cpp on `TEXT`.

    With `reference`, also each engine's agreement with the float64 forward
    pass: it tells which side a disagreement comes from (llama.cpp rounds
    activations to 8 bits for its K-quant dot products).
    """
    from llamacpp_env import run_worker

    from exoquic.models.gguf_file import GGUFFile

    tokens = text_tokens(path)
    theirs = run_worker("logits", {"path": str(path), "tokens": tokens})["top1"]
    ours = exoquic_top1(path, tokens, engine_name)
    types = sorted({info.ggml_type.name for info in GGUFFile.open(path).tensors.values()})
    result: dict[str, Any] = {
        "file": path.name,
        "types": types,
        "tokens": len(tokens),
        "agree": sum(a == b for a, b in zip(ours, theirs, strict=True)),
        "agreement": _share(ours, theirs),
    }
    if reference:
        exact = reference_top1(path, tokens)
        result["exoquic_vs_reference"] = _share(ours, exact)
        result["llama_cpp_vs_reference"] = _share(theirs, exact)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixes", default=",".join(MIXES))
    parser.add_argument("--engine", default="tinygrad")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--reference", action="store_true", help="also compare both with a float64 forward pass"
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = []
    for mix in args.mixes.split(","):
        path = quantize(mix, args.out_dir)
        result = {"mix": mix, "engine": args.engine, **agreement(path, args.engine, args.reference)}
        results.append(result)
        line = (
            f"{mix:>7}: {result['agree']}/{result['tokens']} = {result['agreement']:.1%} top-1 "
            f"agreement with llama.cpp ({args.engine}; types {', '.join(result['types'])})"
        )
        if args.reference:
            line += (
                f"; vs float64 reference: exoquic {result['exoquic_vs_reference']:.1%}, "
                f"llama.cpp {result['llama_cpp_vs_reference']:.1%}"
            )
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
