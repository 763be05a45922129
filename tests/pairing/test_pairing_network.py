"""Pairing over real QUIC on loopback, in one process: codes, expiry, relays, names."""

from __future__ import annotations

import re
import socket
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from pairing_relay import keep, open_relay, own_key

from exoquic.discovery.multicast import MulticastSettings
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore
from exoquic.pairing.lan import announce_pairing, find_pairing_device
from exoquic.pairing.protocol import PairingCode, PairingCodeError, PairingResult
from exoquic.pairing.service import PairingFailed, PairingOffer, open_pairing_offer, pair_with

pytestmark = pytest.mark.timeout(30)

LOCALHOST = "127.0.0.1"


@dataclass
class Device:
    identity: Identity
    name: str
    home: Path

    @property
    def trust(self) -> TrustStore:
        """A fresh read of the device's trust file, as another process would see it."""
        return TrustStore.open(self.home)


@pytest.fixture
def desk(tmp_path: Path) -> Device:
    """The device that shows the code."""
    return Device(Identity.generate(), "desk", tmp_path / "desk")


@pytest.fixture
def laptop(tmp_path: Path) -> Device:
    """The device where the code is typed."""
    return Device(Identity.generate(), "laptop", tmp_path / "laptop")


def offer_for(device: Device, lifetime: float = 20.0) -> AbstractAsyncContextManager[PairingOffer]:
    return open_pairing_offer(
        device.identity, device.trust, name=device.name, host=LOCALHOST, lifetime=lifetime
    )


async def type_code(device: Device, code: str, port: int) -> PairingResult:
    return await pair_with(
        device.identity, device.trust, code, [(LOCALHOST, port)], name=device.name
    )


def other_code(code: str) -> str:
    while (text := PairingCode.generate(0.0).text) == code:
        pass
    return text


def assert_trusts_nothing(*devices: Device) -> None:
    for device in devices:
        assert device.trust.list() == []


async def test_right_code_pairs_both_sides(desk: Device, laptop: Device) -> None:
    async with offer_for(desk) as offer:
        seen_by_laptop = await type_code(laptop, offer.code.text.lower(), offer.port)
        seen_by_desk = await offer.wait_result()
    assert seen_by_laptop == PairingResult(desk.identity.public_key, "desk", desk.identity.node_id)
    assert seen_by_desk.node_id == laptop.identity.node_id and seen_by_desk.name == "laptop"
    (desk_entry,) = laptop.trust.list()
    (laptop_entry,) = desk.trust.list()
    assert (desk_entry.name, desk_entry.public_key) == ("desk", desk.identity.public_key)
    assert (laptop_entry.name, laptop_entry.public_key) == ("laptop", laptop.identity.public_key)


async def test_found_on_the_lan_by_multicast(
    desk: Device, laptop: Device, multicast: MulticastSettings
) -> None:
    async with offer_for(desk) as offer, trio.open_nursery() as nursery:
        await nursery.start(announce_pairing, offer.port, desk.name, multicast)
        with trio.fail_after(5):
            device = await find_pairing_device(wait=5, settings=multicast, settle=0.3)
        assert (device.name, device.addresses, device.port) == ("desk", (LOCALHOST,), offer.port)
        peer = await pair_with(
            laptop.identity, laptop.trust, offer.code.text, device.endpoints, name=laptop.name
        )
        assert peer.node_id == desk.identity.node_id
        assert (await offer.wait_result()).node_id == laptop.identity.node_id
        nursery.cancel_scope.cancel()


async def test_nothing_on_the_lan_is_a_clear_failure(multicast: MulticastSettings) -> None:
    with pytest.raises(PairingFailed, match=r"no device showing a pairing code .* within 0.3 s"):
        await find_pairing_device(wait=0.3, settings=multicast)


async def test_two_devices_showing_codes_are_not_guessed_between(
    multicast: MulticastSettings,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(announce_pairing, 40001, "desk", multicast)
        await nursery.start(announce_pairing, 40002, "studio", multicast)
        with pytest.raises(PairingFailed, match=r"several devices .*--addr"):
            await find_pairing_device(wait=3, settings=multicast, settle=0.5)
        nursery.cancel_scope.cancel()


async def test_wrong_code_fails_and_burns_the_code(desk: Device, laptop: Device) -> None:
    async with offer_for(desk) as offer:
        with pytest.raises(PairingFailed, match=r"refused the pairing.*code is used up"):
            await type_code(laptop, other_code(offer.code.text), offer.port)
        with pytest.raises(PairingFailed, match="could not prove it knows the code"):
            await offer.wait_result()
        # The right code now fails too: one attempt per code.
        with pytest.raises(PairingFailed, match="already used"):
            await type_code(laptop, offer.code.text, offer.port)
    assert_trusts_nothing(desk, laptop)


async def test_mistyped_code_is_caught_before_the_network(desk: Device, laptop: Device) -> None:
    async with offer_for(desk) as offer:
        text = offer.code.text
        typo = text[:-1] + ("0" if text[-1] != "0" else "1")
        with pytest.raises(PairingCodeError):
            await type_code(laptop, typo, offer.port)
        assert not offer.code.used
        await type_code(laptop, text, offer.port)  # the code is still good


async def test_expired_code_fails(desk: Device, laptop: Device) -> None:
    async with offer_for(desk, lifetime=0.3) as offer:
        with pytest.raises(PairingFailed, match="expired before any device used it"):
            await offer.wait_result()
        with pytest.raises(PairingFailed, match="code expired"):
            await type_code(laptop, offer.code.text, offer.port)
    assert_trusts_nothing(desk, laptop)


async def test_nobody_listening_is_a_clear_failure(laptop: Device) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind((LOCALHOST, 0))
        port = closed.getsockname()[1]
    code = PairingCode.generate(0.0).text
    with pytest.raises(PairingFailed, match="could not reach the other device"):
        await pair_with(
            laptop.identity, laptop.trust, code, [(LOCALHOST, port)], name="x", connect_timeout=0.5
        )


@pytest.mark.parametrize(
    ("rewrite_request", "rewrite_response", "reported"),
    [
        (False, False, "someone is relaying"),  # responder sees the relay's TLS key
        (True, False, "someone is relaying"),  # initiator sees the relay's TLS key
        (True, True, "could not prove it knows the code"),  # SPAKE2 ids differ
    ],
    ids=["forward", "own-key-to-responder", "own-key-both-ways"],
)
async def test_relay_cannot_pair_even_with_the_right_code(
    desk: Device, laptop: Device, rewrite_request: bool, rewrite_response: bool, reported: str
) -> None:
    mallory = Identity.generate()
    async with offer_for(desk) as offer:
        async with open_relay(
            mallory,
            (LOCALHOST, offer.port),
            to_responder=own_key(mallory) if rewrite_request else keep,
            to_initiator=own_key(mallory) if rewrite_response else keep,
        ) as relay:
            relay_port = relay.local_address[1]
            with pytest.raises(PairingFailed, match=reported):
                await type_code(laptop, offer.code.text, relay_port)
        with pytest.raises(PairingFailed):
            await offer.wait_result()
    assert_trusts_nothing(desk, laptop)


async def test_initiator_refuses_a_known_name_with_another_key(
    desk: Device, laptop: Device
) -> None:
    impostor = Identity.generate()
    laptop.trust.add(impostor.public_key, "Desk")  # names compare case-insensitively
    async with offer_for(desk) as offer:
        with pytest.raises(PairingFailed, match=re.escape(f"already trusts {impostor.node_id}")):
            await type_code(laptop, offer.code.text, offer.port)
        with pytest.raises(PairingFailed):
            await offer.wait_result()
    assert_trusts_nothing(desk)
    assert [p.node_id for p in laptop.trust.list()] == [impostor.node_id]


async def test_responder_refuses_a_known_name_with_another_key(
    desk: Device, laptop: Device
) -> None:
    impostor = Identity.generate()
    desk.trust.add(impostor.public_key, "laptop")
    async with offer_for(desk) as offer:
        with pytest.raises(PairingFailed, match="pick another --name"):
            await type_code(laptop, offer.code.text, offer.port)
        with pytest.raises(PairingFailed, match="refusing to trust"):
            await offer.wait_result()
    assert_trusts_nothing(laptop)
    assert [p.node_id for p in desk.trust.list()] == [impostor.node_id]
