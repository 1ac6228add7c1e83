"""Subcommands of `pac` that belong to the core (engine) package."""
