"""Write a model's tokenizer as a Hugging Face directory, for clients that
tokenize on their side (lm-evaluation-harness's `local-completions` with
`tokenizer_backend=huggingface,tokenizer=DIR`), with no hub:

    uv run python tools/export_tokenizer.py smollm2-135m-instruct /tmp/smollm2-tokenizer

The model is what `exoquic up --model` takes (a registry id, a GGUF file or a
Hugging Face directory). The directory gets `tokenizer.json` (ids equal to
exoquic's) and a `tokenizer_config.json` naming the fast tokenizer class, so
`transformers.AutoTokenizer.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from exoquic.models.source import resolve_source


def export(model: str, out: Path) -> None:
    tokenizer = resolve_source(model).load_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.backend.save(str(out / "tokenizer.json"))
    config: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    # lm-evaluation-harness starts each perplexity window with bos (else eos):
    # without them it sends a null token id.
    for name, token_id in (
        ("bos_token", tokenizer.bos_token_id),
        ("eos_token", tokenizer.eos_token_id),
    ):
        if token_id is not None:
            config[name] = tokenizer.backend.id_to_token(token_id)
    (out / "tokenizer_config.json").write_text(json.dumps(config) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registry id, GGUF file or Hugging Face directory")
    parser.add_argument("out", type=Path, help="directory to write")
    args = parser.parse_args()
    export(args.model, args.out)
    print(f"wrote {args.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
