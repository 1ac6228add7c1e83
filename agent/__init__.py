"""PAC mesh agent service."""
