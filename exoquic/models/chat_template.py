"""Render a model's jinja2 chat template the way Hugging Face transformers does.

The template comes from a downloaded model, so it runs in jinja2's immutable
sandbox. Environment options and helpers (`raise_exception`, `tojson`,
`strftime_now`, loop controls, trim/lstrip blocks) follow transformers'
`apply_chat_template`, which is what template authors test against.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from exoquic.models.errors import ChatTemplateError, MessagesRejectedError

# Used when a model ships no template: ChatML, which many instruct models use.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> NoReturn:
    # The template refuses the messages (a system message it has no place for,
    # roles out of order): the client's error, a 400 (a ChatTemplateError too).
    raise MessagesRejectedError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, sort_keys: bool = False
) -> str:
    # jinja2's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile (and cache) a chat template; raises ChatTemplateError on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"invalid chat template: {e}") from e


def render_chat(
    source: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **special_tokens: str | None,
) -> str:
    """Render `messages` with the template `source`.

    `special_tokens` (bos_token, eos_token, ...) are passed to the template as
    variables, as transformers does; so is `tools` (OpenAI's tool objects),
    left undefined when None, as templates test `tools is defined`. Raises
    ChatTemplateError when the template rejects the messages or fails.
    """
    template = compile_template(source)
    extra = {} if tools is None else {"tools": tools}
    try:
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            **extra,
            **special_tokens,
        )
    except ChatTemplateError:
        raise
    except (jinja2.TemplateError, TypeError, KeyError, ValueError) as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e
