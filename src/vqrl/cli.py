"""The `vqrl` console script: one subcommand per task, each a thin call into the module that owns it.

Modules are imported lazily so that `vqrl --help` and `vqrl validate-data` start fast; no logic lives here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "train": ("vqrl.grpo", "train with GRPO (same flags as `python -m vqrl.grpo`; --config recipe.yaml)"),
    "validate-data": ("vqrl.data.validate", "check data files record by record; exit 1 on any problem"),
    "tiny-model": ("vqrl.models.tiny", "write a small random Qwen-VL model + locally trained tokenizer"),
    "random-model": ("vqrl.models.shapes", "write a random-weight model of a real architecture (configs/models)"),
    "eval": ("vqrl.eval.run", "score a model on quality datasets: SRCC/PLCC/KRCC/RMSE, plots"),
    "convert": ("vqrl.data.converters", "convert a public IQA/VQA dataset's label files to vqrl records"),
    "make-perception-data": ("vqrl.datagen.perception", "distort pristine images into Stage-1 perception data"),
    "bench": ("vqrl.bench", "benchmark plain TRL against vqrl trainers on a random-weight real-shape model"),
    "watchdog": ("vqrl.watchdog", "run a command, restart it on crash or hang, resume from checkpoints"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="vqrl", description="Visual quality assessment with RL on TRL.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    if hasattr(module, "main"):  # modules with their own parser (train, watchdog) take raw argv
        return int(module.main(rest) or 0)
    sub_parser = argparse.ArgumentParser(prog=f"vqrl {name}", description=COMMANDS[name][1])
    module.add_arguments(sub_parser)
    return int(module.run(sub_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
