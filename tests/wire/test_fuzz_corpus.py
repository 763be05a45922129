"""The fuzz seed corpus covers every registered message type and is up to date."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from exoquic.wire.messages import MESSAGE_TYPES, decode_message

FUZZ = Path(__file__).parents[2] / "fuzz"


def load_make_corpus() -> ModuleType:
    """fuzz/ is a folder of scripts, not a package: load the generator by path."""
    spec = importlib.util.spec_from_file_location("make_corpus", FUZZ / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_corpus = load_make_corpus()


def test_every_registered_message_type_has_a_seed() -> None:
    seeds = sorted((FUZZ / "corpus" / "messages").iterdir())
    covered = {type(decode_message(seed.read_bytes())).TYPE for seed in seeds}
    protocol = {t for t, cls in MESSAGE_TYPES.items() if cls.__module__.startswith("exoquic.")}
    assert "model_progress" in protocol
    assert covered == protocol, "re-run: uv run python fuzz/make_corpus.py"


def test_generator_takes_its_types_from_the_registry() -> None:
    assert make_corpus.protocol_types() == sorted(make_corpus.EXAMPLES)


def test_generator_refuses_to_forget_a_type() -> None:
    examples = {t: m for t, m in make_corpus.EXAMPLES.items() if t != "model_progress"}
    with pytest.raises(make_corpus.MissingExampleError, match="model_progress"):
        make_corpus.message_seeds(examples)


def test_generator_refuses_an_example_under_the_wrong_type() -> None:
    examples = {**make_corpus.EXAMPLES, "ping": make_corpus.EXAMPLES["pong"]}
    with pytest.raises(make_corpus.MissingExampleError, match="ping"):
        make_corpus.message_seeds(examples)


@pytest.mark.parametrize("kind", ["messages", "frames"])
def test_committed_seeds_are_what_the_generator_writes(kind: str, tmp_path: Path) -> None:
    make_corpus.write_messages_and_frames(tmp_path)
    generated = sorted(p.name for p in (tmp_path / kind).iterdir())
    committed = sorted(p.name for p in (FUZZ / "corpus" / kind).iterdir())
    assert generated == committed, "re-run: uv run python fuzz/make_corpus.py"
