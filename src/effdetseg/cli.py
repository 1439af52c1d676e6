"""The ``effdetseg`` console script: one sub-command per module in :mod:`effdetseg.commands`.

Each command module exposes ``main(argv: list[str]) -> int | None``. Modules are imported only
when their command runs, so ``effdetseg --help`` is instant.
"""
from __future__ import annotations

import importlib
import sys

from ._version import __version__

COMMANDS = {
    "train": "train a model (Hydra overrides; default: D0 on synthetic data)",
    "evaluate": "dataset-level mIoU of a checkpoint, per-class table, optional TTA",
    "predict": "segment images: color mask, overlay and label-id PNG",
    "classify": "top-5 ImageNet (or custom) classes of an image",
    "export": "export a checkpoint to ONNX or TorchScript, with a parity check",
    "benchmark": "params, GMACs, latency and memory of zoo models",
    "models": "table of every model variant",
    "data": "download, prepare or check a dataset",
    "demo": "a local web page that segments a dropped image",
}


def _usage() -> str:
    lines = ["usage: effdetseg <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `effdetseg <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"effdetseg: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .errors import EffdetsegError

    module = importlib.import_module(f"effdetseg.commands.{command}")
    try:
        return int(module.main(rest) or 0)
    except EffdetsegError as e:
        print(f"effdetseg {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the user gave: a genuine failure, keep its traceback
            raise
        # A file error no code path above named (a folder vanished, a device failed): still one line.
        print(f"effdetseg {command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"effdetseg {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
