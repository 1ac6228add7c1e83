"""PAC mesh: Parallel Adapters + activation cache + hybrid parallelism over a gRPC mesh."""

__version__ = "0.1.0"
