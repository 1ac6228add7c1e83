"""The wire: tensor messages over gRPC, shared by the agent and the coordinator.

A tensor message is a safetensors blob (``codec``), optionally with activations cast down
(``compression``), streamed as chunks and reassembled into one buffer (``chunking``) under
explicit limits (``limits``). ``client.send_tensors`` sends one; ``receiver`` turns a stream
into tensors in a ``Mailbox``. ``channel`` and ``auth`` build channels, servers, TLS and the
join-token check. The model engine never imports this package.
"""
