"""Each family's chat template renders as transformers renders it; refusals are typed."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import pytest
import tokenizers
from chat_templates import FAMILIES
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizer_fixtures import train_byte_level_bpe, write_byte_level_gguf

from exoquic.models.chat_template import render_chat
from exoquic.models.errors import ChatTemplateError, MessagesRejectedError
from exoquic.models.tokenizer import Tokenizer

SYSTEM = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


class TemplateException(Exception):
    pass


def reference_render(template: str, messages: list[dict[str, str]], **tokens: str) -> str:
    """transformers' `apply_chat_template` rendering, rebuilt from its source
    (`_compile_jinja_template`): the environment, filters and globals it sets."""

    def raise_exception(message: str) -> NoReturn:
        raise TemplateException(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=True, **tokens
    )


def _render(family: str, messages: list[dict[str, str]]) -> str:
    f = FAMILIES[family]
    return render_chat(f.template, messages, True, bos_token=f.bos_token, eos_token=f.eos_token)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma-2"])
def test_system_conversation_renders_like_transformers(family: str) -> None:
    f = FAMILIES[family]
    messages = [SYSTEM, *TURNS]
    expected = reference_render(f.template, messages, bos_token=f.bos_token, eos_token=f.eos_token)
    assert _render(family, messages) == expected


TODAY = datetime.now().strftime("%d %b %Y")
EXPECTED = {
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {TODAY}\n\n"
        "You are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "qwen2.5": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "mistral-v0.3": (
        "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nCapital of France?[/INST]"
    ),
    "phi-3.5": (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nCapital of France?<|end|>\n<|assistant|>\n"
    ),
}
EXPECTED["qwen3"] = EXPECTED["qwen2.5"]


@pytest.mark.parametrize("family", EXPECTED)
def test_system_conversation_prompt_text(family: str) -> None:
    """The prompt each family's model card documents, to the character."""
    assert _render(family, [SYSTEM, *TURNS]) == EXPECTED[family]


def test_gemma_refuses_a_system_message_with_a_typed_error() -> None:
    with pytest.raises(MessagesRejectedError, match="System role not supported"):
        _render("gemma-2", [SYSTEM, *TURNS])
    with pytest.raises(TemplateException, match="System role not supported"):
        reference_render(FAMILIES["gemma-2"].template, [SYSTEM, *TURNS], bos_token="<bos>")
    assert _render("gemma-2", TURNS) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert _render("gemma-2", TURNS) == reference_render(
        FAMILIES["gemma-2"].template, TURNS, bos_token="<bos>", eos_token="<eos>"
    )


def test_roles_out_of_order_are_refused() -> None:
    two_users = [TURNS[0], TURNS[2]]
    for family in ("gemma-2", "mistral-v0.3"):
        with pytest.raises(MessagesRejectedError, match="alternate"):
            _render(family, two_users)


def test_a_broken_template_is_not_the_clients_fault() -> None:
    with pytest.raises(ChatTemplateError) as info:
        render_chat("{% for %}", TURNS)
    assert not isinstance(info.value, MessagesRejectedError)


@pytest.mark.parametrize("family", ["qwen2.5", "qwen3", "llama-3"])
def test_tool_call_turns_render_like_transformers(family: str) -> None:
    """Tool calls go through the template's `tojson`, which must not HTML-escape or sort."""
    call = {"function": {"name": "weather", "arguments": {"z": "Zürich & <Bern>", "a": 1}}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    f = FAMILIES[family]
    expected = reference_render(f.template, messages, bos_token=f.bos_token, eos_token=f.eos_token)
    assert '"z": "Zürich & <Bern>", "a": 1' in expected
    assert _render(family, messages) == expected


@pytest.mark.parametrize(("family", "pre"), [("llama-3", "llama-bpe"), ("qwen2.5", "qwen2")])
def test_gguf_template_prompt_tokenizes_with_special_ids(
    family: str, pre: str, tmp_path: Path
) -> None:
    """The template from a GGUF renders, and its markers become their control ids."""
    f = FAMILIES[family]
    reference = tokenizers.Tokenizer.from_file(str(train_byte_level_bpe(pre, tmp_path)))
    gguf_path = write_byte_level_gguf(tmp_path / "tokenizer.json", pre, tmp_path, f.template)
    tokenizer = Tokenizer.from_gguf(gguf_path)
    assert tokenizer.chat_template == f.template
    prompt = tokenizer.apply_chat_template([SYSTEM, *TURNS])
    eos = reference.id_to_token(tokenizer.eos_token_id)
    bos = tokenizer.bos_token or ""
    assert prompt == render_chat(f.template, [SYSTEM, *TURNS], bos_token=bos, eos_token=eos)
    ids = tokenizer.encode(prompt)
    assert ids == reference.encode(prompt, add_special_tokens=False).ids
    end = reference.token_to_id(f.end_of_turn)
    assert ids.count(end) == 4 and end in tokenizer.eos_token_ids  # one per message
    assert tokenizer.decode(ids) == prompt
