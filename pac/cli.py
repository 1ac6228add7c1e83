"""The `pac` command: one entry point that dispatches to the services and the engine.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import heavy dependencies (torch, grpc) inside
``run`` so that ``pac --help`` and ``pac plan`` stay light. This is the one place in
``pac/`` that may import the service packages.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Order is the order shown in `pac --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("coordinator.commands.demo", "run the main job on a local mesh (real model, data)"),
    "train": ("pac.commands.train", "fine-tune a model on this device (standalone)"),
    "predict": ("pac.commands.predict", "predict with a backbone and trained adapters"),
    "plan": ("planner.cli", "plan stages and device groups for a cluster"),
    "planner": ("planner.serve", "run the planner gRPC service"),
    "agent": ("agent.cli", "run the long-lived device agent"),
    "coordinator": ("coordinator.cli", "run the coordinator: agent registry, jobs, REST API"),
    "submit": ("coordinator.commands.submit", "submit a training job to the coordinator"),
    "status": ("coordinator.commands.status", "list the mesh's agents and jobs"),
    "jobs": ("coordinator.commands.jobs", "list the coordinator's jobs (or show one)"),
    "cancel": ("coordinator.commands.cancel", "cancel a job"),
    "cluster": ("pac.cluster.cli", "start or stop a local mesh (planner, coordinator, agents)"),
    "netns": ("pac.cluster.netns", "run a mesh in network namespaces over shaped links (root)"),
}


def _load(module_name: str) -> object:
    return importlib.import_module(module_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pac", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = _load(module_name)
        except ModuleNotFoundError as error:
            # A command whose module is not part of this install is simply not offered.
            if error.name and module_name.startswith(error.name):
                continue
            raise
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)  # type: ignore[attr-defined]
        command_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
