"""An agent names the samples its kept cache holds by 8-byte keys (RestoreStateReply): a
reply for 300,000 samples fits gRPC's message limit, where their fingerprints did not."""

from __future__ import annotations

from pac.data.encoding import fingerprint, fingerprint_key
from pac.wire.limits import MAX_GRPC_MESSAGE_BYTES
from protos.v1 import agent_pb2

SAMPLES = 300_000


def test_a_reply_for_hundreds_of_thousands_of_samples_fits_one_message() -> None:
    fingerprints = [fingerprint([i, i + 1], None, None, i % 2) for i in range(SAMPLES)]
    keys = [fingerprint_key(f) for f in fingerprints]
    assert len(set(keys)) == SAMPLES  # no two samples share a key
    reply = agent_pb2.RestoreStateReply(parameters=3, cached_sample_keys=keys)
    assert reply.ByteSize() < MAX_GRPC_MESSAGE_BYTES
    # The whole fingerprints (64 hex characters each) would not have fit.
    assert SAMPLES * (len(fingerprints[0]) + 2) > MAX_GRPC_MESSAGE_BYTES
    decoded = agent_pb2.RestoreStateReply.FromString(reply.SerializeToString())
    assert set(decoded.cached_sample_keys) == set(keys)


def test_a_key_is_a_fixed_hash_of_the_whole_fingerprint() -> None:
    a = fingerprint([1, 2, 3], None, None, 0)
    b = fingerprint([1, 2, 3], None, None, 1)
    assert fingerprint_key(a) != fingerprint_key(b)
    # The same in every process (blake2b, not Python's salted hash()): the agent computes
    # the keys and the coordinator compares them with its own.
    assert fingerprint_key("x") == 0x4ADF4367F96E584F
