"""Fuzzing in CI: every target of targets.py, bounded, with two runners.

atheris (coverage-guided, libFuzzer) runs each target in a child process
for a fixed number of inputs from a fixed seed, starting from the seed
corpus, and prints how far it got; ``python -m bench fuzz`` runs the same
targets for as long as you like. hypothesis runs each target in-process on
mutations of the same seeds, so that a failure shrinks to a readable input
(a seed and a few edits).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from astralboot.common.bus.frames import REPLY_LIMITS, unpack
from astralboot.services.dhcpd.client_messages import read_client_message
from astralboot.services.tftpd.packets import decode as decode_tftp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_atheris import fuzz
from targets import (DNS_CLIENT, DNS_UPSTREAM, SEEDS, TARGETS, dhcp_policies, dns_policy)

RUNS = 30_000  # per target: a few seconds each on one core


@pytest.mark.parametrize("target", list(TARGETS))
def test_atheris_finds_nothing(target: str, tmp_path: Path) -> None:
    outcome = fuzz(target, [f"-runs={RUNS}", "-seed=1", "-timeout=10"],
                   seeds=tmp_path / "corpus", artifacts=tmp_path / "found", timeout=300)
    print(f"\n{outcome.summary()}\n    libFuzzer: {outcome.status}")
    found = "\n".join(f"{path.name}: {path.read_bytes().hex()}" for path in outcome.crashes)
    tail = "\n".join(outcome.output.splitlines()[-40:])
    assert outcome.returncode == 0 and not outcome.crashes, (
        f"atheris found a failing input for {target} (exit {outcome.returncode}):\n"
        f"{found}\n{tail}")
    assert outcome.executions >= RUNS, f"libFuzzer stopped early:\n{tail}"


def _mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Each edit replaces ``cut`` bytes at ``at`` (wrapped) with ``insert``."""
    data = bytearray(seed)
    for at, cut, insert in edits:
        at %= len(data) + 1
        data[at:at + cut] = insert
    return bytes(data)


def mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Seeds with a few bytes overwritten, inserted or cut, or any bytes at all;
    a failure shrinks towards the first seed with no edits."""
    edits = st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 8),
                               st.binary(max_size=8)), max_size=6)
    return st.one_of(st.builds(_mutate, st.sampled_from(seeds), edits),
                     st.binary(max_size=600))


MUTATED = {name: mutations(list(seeds().values())) for name, seeds in SEEDS.items()}


@pytest.mark.parametrize("target", list(TARGETS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_seeds_keep_the_invariants(target: str, data: st.DataObject) -> None:
    TARGETS[target](data.draw(MUTATED[target], label="input"))


# The seeds are what makes the fuzzing reach past the decoders: each one must
# be accepted as it is, and every DHCP seed must be answered.

@pytest.mark.parametrize("name,packet", list(SEEDS["dhcp_server"]().items()))
def test_dhcp_seed_is_answered(name: str, packet: bytes) -> None:
    replies, _ = dhcp_policies().exchange(read_client_message(packet))
    assert replies


@pytest.mark.parametrize("name,packet", list(SEEDS["tftp_packet"]().items()))
def test_tftp_seed_decodes(name: str, packet: bytes) -> None:
    decode_tftp(packet)


@pytest.mark.parametrize("name,frame", list(SEEDS["bus_request"]().items()))
def test_bus_seed_unpacks(name: str, frame: bytes) -> None:
    unpack(frame, REPLY_LIMITS)


@pytest.mark.parametrize("name,query", list(SEEDS["dns_query"]().items()))
def test_dns_query_seed_is_answered_or_forwarded(name: str, query: bytes) -> None:
    actions = dns_policy().handle(query, DNS_CLIENT, 0.0, "udp")
    assert [type(a).__name__ for a in actions] in (["Reply"], ["Forward"]), actions


@pytest.mark.parametrize("name,reply", list(SEEDS["dns_upstream_reply"]().items()))
def test_dns_reply_seed_reaches_the_client_or_tcp(name: str, reply: bytes) -> None:
    from astralboot.services.dnsd.forward import Client, Forwarder, Question
    import dns.flags
    import dns.name
    forwarder = Forwarder([DNS_UPSTREAM], stats=None)
    question = Question(dns.name.from_text("www.example.test"), 1, 1)
    sent = forwarder.query(question, Client(DNS_CLIENT, "udp", 7, question,
                                            int(dns.flags.RD), 512, False), 0.0)
    reply = sent[0].query_id.to_bytes(2, "big") + reply[2:]  # type: ignore[union-attr]
    got = forwarder.receive(reply, DNS_UPSTREAM, 1.0)
    assert [type(a).__name__ for a in got] == (["ToUpstream"] if name == "truncated"
                                                else ["ToClient"]), got
