"""PAC mesh planner service."""
