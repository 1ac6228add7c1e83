"""The single-device engine: load a model, train it with a technique, evaluate, export."""
