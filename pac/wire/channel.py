"""gRPC channels and server ports: options, TLS/mTLS credentials, plaintext only if asked.

``TransportSecurity`` is built from certificate paths (``--tls-cert --tls-key --tls-ca``)
or ``insecure=True`` (``--insecure``). A server with a CA requires client certificates
(mTLS); a client with a cert and key presents them. Channels are meant to be reused: one
per peer address (``ChannelPool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from pac.wire.limits import MAX_GRPC_MESSAGE_BYTES

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # Chunks are at most 4 MiB plus framing; nothing larger is ever one message.
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    # Detect a dead peer on an idle channel within about a minute.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
    # Two servers must not share a port silently (SO_REUSEPORT would split the calls).
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class SecurityError(ValueError):
    """The TLS flags do not make a usable configuration."""


@dataclass(frozen=True)
class TransportSecurity:
    """TLS material (PEM file paths) or explicit plaintext."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    insecure: bool = False
    # Name to check in the server's certificate instead of the address's host (tests).
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.insecure and (self.cert or self.key or self.ca):
            raise SecurityError("--insecure cannot be combined with --tls-cert/--tls-key/--tls-ca")
        if not self.insecure and not self.ca and not self.cert:
            raise SecurityError(
                "no transport security given: pass --tls-cert/--tls-key (and --tls-ca for "
                "mTLS), or --insecure to run in plaintext"
            )
        if bool(self.cert) != bool(self.key):
            raise SecurityError("--tls-cert and --tls-key go together")

    @staticmethod
    def _read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """None for plaintext; mTLS (client certificates required) when a CA is given."""
        if self.insecure:
            return None
        if not (self.cert and self.key):
            raise SecurityError("a TLS server needs --tls-cert and --tls-key")
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        ca = self._read(self.ca)
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None for plaintext. Trusts ``ca`` (or the system roots); presents cert and key."""
        if self.insecure:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )


def open_channel(address: str, security: TransportSecurity) -> grpc.aio.Channel:
    """An aio channel to ``address`` with the wire's options."""
    credentials = security.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = list(CHANNEL_OPTIONS)
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return grpc.aio.secure_channel(address, credentials, options=options)


def bind(server: grpc.aio.Server, listen: str, security: TransportSecurity) -> int:
    """Add a port for ``listen`` (``host:port``, port 0 = any free one); returns the port."""
    credentials = security.server_credentials()
    if credentials is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}: the address is in use or invalid")
    return port


class ChannelPool:
    """One reused channel per peer address."""

    def __init__(self, security: TransportSecurity) -> None:
        self.security = security
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = open_channel(address, self.security)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
