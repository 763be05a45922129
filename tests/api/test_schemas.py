from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exoquic.api.errors import APIError
from exoquic.api.schemas import choice_sampling, parse_chat_request, parse_text_request

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**overrides: Any) -> Any:
    return parse_chat_request({**BASE, **overrides})


def test_defaults_follow_openai() -> None:
    req = chat()
    assert req.params.sampling.temperature == 1.0
    assert req.params.sampling.top_p == 1.0
    assert req.params.max_tokens is None
    assert req.params.stop == ()
    assert not req.params.stream


def test_all_supported_fields_are_honoured() -> None:
    req = chat(
        temperature=0,
        top_p=0.5,
        top_k=5,
        seed=7,
        max_tokens=9,
        stop="x",
        stream=True,
        stream_options={"include_usage": True},
    )
    p = req.params
    assert (p.sampling.temperature, p.sampling.top_p, p.sampling.top_k, p.sampling.seed) == (
        0,
        0.5,
        5,
        7,
    )
    assert (p.max_tokens, p.stop, p.stream, p.include_usage) == (9, ("x",), True, True)


def test_max_completion_tokens_and_max_tokens_take_the_smaller() -> None:
    assert chat(max_completion_tokens=5, max_tokens=10).params.max_tokens == 5


def test_text_parts_are_joined() -> None:
    req = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert req.messages[0]["content"] == "ab"


def test_longest_allowed_stop_is_accepted() -> None:
    assert chat(stop=["z" * 256]).params.stop == ("z" * 256,)


def test_token_array_longer_than_the_context_is_refused_before_each_id_is_checked() -> None:
    # The bad id at the end is never looked at: the length alone refuses it.
    body = {"model": "m", "prompt": [1] * 99 + ["not an id"]}
    with pytest.raises(APIError) as info:
        parse_text_request(body, context=100)
    assert (info.value.param, info.value.code) == ("prompt", "context_length_exceeded")
    assert parse_text_request({"model": "m", "prompt": [1] * 99}, context=100).prompt == (1,) * 99


USER_X = {"role": "user", "content": "x"}
TEXT_X = {"type": "text", "text": "x"}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([USER_X] * 9 + ["not a message"], "messages"),
        ([{"role": "user", "content": [TEXT_X] * 9 + [None]}], "messages[0].content"),
    ],
)
def test_more_messages_or_parts_than_the_context_are_refused_before_each_is_checked(
    messages: list[Any], param: str
) -> None:
    # The bad item at the end is never looked at: the count alone refuses it.
    with pytest.raises(APIError) as info:
        parse_chat_request({**BASE, "messages": messages}, context=10)
    assert (info.value.param, info.value.code) == (param, "context_length_exceeded")


def test_fewer_messages_and_parts_than_the_context_are_accepted() -> None:
    messages = [*[USER_X] * 8, {"role": "user", "content": [TEXT_X] * 9}]
    parsed = parse_chat_request({**BASE, "messages": messages}, context=10).messages
    assert len(parsed) == 9 and parsed[-1]["content"] == "x" * 9


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        ({"stop": ["a", "y" * 257]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": "1"}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 11}, "repetition_penalty"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"a": 1}}, "logit_bias"),
        ({"logit_bias": {"1": True}}, "logit_bias"),
        ({"logit_bias": [1]}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "strin"}},
                }
            },
            "response_format",
        ),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": "get_weather"}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_fields_name_the_parameter(overrides: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as info:
        chat(**overrides)
    assert info.value.status == 400
    assert info.value.param == param


def test_text_request() -> None:
    assert parse_text_request({"model": "m", "prompt": ["hello"]}).prompt == "hello"
    with pytest.raises(APIError):
        parse_text_request({"model": "m", "prompt": 1})


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_any_json_is_accepted_or_refused_with_a_400(body: Any) -> None:
    for parse in (parse_chat_request, parse_text_request):
        try:
            parse(body)
        except APIError as error:
            assert error.status == 400


def test_prompt_forms() -> None:
    assert parse_text_request({"model": "m", "prompt": [1, 2, 3]}).prompt == (1, 2, 3)
    assert parse_text_request({"model": "m", "prompt": [[4, 5]]}).prompt == (4, 5)
    for bad in ([], [-1], [1.5], ["a", "b"], [[1], [2]], [True], None):
        with pytest.raises(APIError) as info:
            parse_text_request({"model": "m", "prompt": bad})
        assert info.value.param == "prompt", bad


def test_sdk_echo_fields_only_while_empty() -> None:
    echoed = {"role": "assistant", "content": "x", "refusal": None, "tool_calls": [], "name": "a"}
    assert chat(messages=[echoed]).messages[0] == {"role": "assistant", "content": "x"}
    with pytest.raises(APIError) as info:
        chat(messages=[{**echoed, "refusal": "no"}])
    assert info.value.param == "messages[0].refusal"
    with pytest.raises(APIError) as info:  # a call must name its function
        chat(messages=[{**echoed, "tool_calls": [{"id": "1"}]}])
    assert info.value.param == "messages[0].tool_calls[0]"
    with pytest.raises(APIError):
        chat(messages=[{"role": "user", "content": "x", "name": 3}])


def test_developer_role_is_a_system_message() -> None:
    assert chat(messages=[{"role": "developer", "content": "be brief"}]).messages[0]["role"] == (
        "system"
    )


def test_response_format_becomes_a_grammar() -> None:
    assert chat(response_format={"type": "text"}).params.sampling.grammar is None
    assert chat(response_format={"type": "json_object"}).params.sampling.grammar
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    grammar = chat(response_format=spec).params.sampling.grammar
    assert grammar is not None and '"a"' in grammar


def test_sampling_knobs_reach_the_sampling_params() -> None:
    params = chat(
        min_p=0.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"7": -100, "3": 2.5},
        n=3,
    ).params
    sampling = params.sampling
    assert (sampling.min_p, sampling.presence_penalty, sampling.frequency_penalty) == (
        0.1,
        0.5,
        -0.5,
    )
    assert sampling.repetition_penalty == 1.2
    assert sampling.logit_bias == ((3, 2.5), (7, -100.0))
    assert params.n == 3


def test_choices_get_consecutive_seeds() -> None:
    sampling = chat(seed=2**63 - 1).params.sampling
    assert [choice_sampling(sampling, i).seed for i in range(3)] == [2**63 - 1, 0, 1]
    assert choice_sampling(chat().params.sampling, 2).seed is None


def test_nan_and_infinity_are_refused() -> None:
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(APIError):
            chat(temperature=value)
        with pytest.raises(APIError):
            chat(top_p=value)


def text(**overrides: Any) -> Any:
    return parse_text_request({"model": "m", "prompt": "hi", **overrides})


def test_logprobs_are_off_unless_asked() -> None:
    assert chat().params.logprobs is None
    assert chat(logprobs=False).params.logprobs is None
    assert text().params.logprobs is None


def test_chat_logprobs_and_top_logprobs() -> None:
    assert chat(logprobs=True).params.logprobs == 0
    assert chat(logprobs=True, top_logprobs=20).params.logprobs == 20


def test_text_logprobs_count_alternatives() -> None:
    assert text(logprobs=0).params.logprobs == 0
    assert text(logprobs=5).params.logprobs == 5


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 2.0}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_bad_chat_logprobs_are_refused(overrides: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as info:
        chat(**overrides)
    assert (info.value.status, info.value.param) == (400, param)


@pytest.mark.parametrize("value", [6, -1, True, 1.5, "1"])
def test_bad_text_logprobs_are_refused(value: Any) -> None:
    with pytest.raises(APIError) as info:
        text(logprobs=value)
    assert (info.value.status, info.value.param) == (400, "logprobs")
