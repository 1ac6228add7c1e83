"""PAC mesh coordinator service."""
