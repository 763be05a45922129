import hashlib

import pytest

from exoquic.identity import crockford
from exoquic.identity.node_id import NodeIdError, node_id_from_public_key, parse_node_id

KEY = bytes(range(32))


def test_format_is_prefix_four_groups_and_check() -> None:
    node_id = node_id_from_public_key(KEY)
    prefix, *groups, check = node_id.split("-")
    assert prefix == "exq"
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    assert len(check) == 1
    assert set("".join(groups)) <= set(crockford.ALPHABET)


def test_id_is_derived_from_the_key_hash() -> None:
    digest = hashlib.sha256(b"exoquic node id v1\x00" + KEY).digest()
    value = int.from_bytes(digest[:10], "big")
    symbols = node_id_from_public_key(KEY).replace("-", "")[3:]
    assert crockford.decode(symbols[:-1]) == value
    assert symbols[-1] == crockford.CHECK_ALPHABET[value % 37]


def test_different_keys_different_ids() -> None:
    assert node_id_from_public_key(KEY) != node_id_from_public_key(bytes(32))


def test_rejects_wrong_key_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        node_id_from_public_key(b"short")


def test_parse_accepts_case_missing_prefix_and_confusions() -> None:
    node_id = node_id_from_public_key(KEY)
    sloppy = node_id.lower().replace("0", "o").replace("1", "l")
    assert parse_node_id(sloppy) == node_id
    assert parse_node_id(node_id[4:].replace("-", " ")) == node_id
    assert parse_node_id(node_id.replace("-", "")) == node_id
    assert parse_node_id(f"  {node_id}\n") == node_id


@pytest.mark.parametrize("position", range(4, 23))
def test_any_single_wrong_symbol_is_caught(position: int) -> None:
    node_id = node_id_from_public_key(KEY)
    if node_id[position] == "-":
        return
    for replacement in crockford.ALPHABET:
        if replacement == node_id[position]:
            continue
        typo = node_id[:position] + replacement + node_id[position + 1 :]
        with pytest.raises(NodeIdError):
            parse_node_id(typo)


def test_bad_check_symbol_message_is_clear() -> None:
    node_id = node_id_from_public_key(KEY)
    wrong = "A" if node_id[-1] != "A" else "B"
    with pytest.raises(NodeIdError, match="check symbol"):
        parse_node_id(node_id[:-1] + wrong)


def test_adjacent_swap_is_caught() -> None:
    node_id = node_id_from_public_key(KEY)
    symbols = node_id.replace("-", "")[3:]
    for i in range(len(symbols) - 2):
        if symbols[i] == symbols[i + 1]:
            continue
        swapped = symbols[:i] + symbols[i + 1] + symbols[i] + symbols[i + 2 :]
        with pytest.raises(NodeIdError):
            parse_node_id(swapped)


@pytest.mark.parametrize(
    ("text", "match"),
    [("exq-1234", "has 7 symbols"), ("", "has 0 symbols"), ("exq-ABCU-0000-0000-0000-0", "'U'")],
)
def test_malformed_ids(text: str, match: str) -> None:
    with pytest.raises(NodeIdError, match=match):
        parse_node_id(text)
