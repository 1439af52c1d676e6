"""``effdetseg train [overrides]``: train a segmentation model (see configs/train.yaml).

Examples:
  effdetseg train                                   # D0 on synthetic shapes, a few minutes on a CPU
  effdetseg train data=folder data.root=DIR train.max_minutes=10   # your images: a plan from the data
  effdetseg train data=voc_aug data.root=PATH train.model.name=efficientdet_d4_seg
  effdetseg train resume=experiments/NAME           # continue a run exactly where it stopped
  torchrun --nproc_per_node=2 -m effdetseg train …  # DDP
"""
from __future__ import annotations

import sys

HELP = __doc__.replace("``", "") + """
Overrides use Hydra's grammar: key=value, +key=value (a new key in an open node such as
train.model.overrides), data=PRESET (synthetic, voc, voc_aug, coco_voc, camvid, folder).
`--device X` is device=X. allow_targets=[my.module.Class] trusts a _target_ that an experiment's
config.yaml names beyond the built-in allowlist. `effdetseg train --cfg` prints the composed
config and exits.
"""


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(HELP.strip())
        return 0
    from omegaconf import OmegaConf

    from ..errors import EffdetsegError

    show_config = "--cfg" in argv
    overrides: list[str] = []
    args = iter(a for a in argv if a != "--cfg")
    for arg in args:
        if arg == "--device" or arg.startswith("--device="):
            value = arg.partition("=")[2] if "=" in arg else next(args, None)
            if not value:
                raise EffdetsegError("--device needs a value (auto, cpu, cuda or cuda:N)")
            overrides.append(f"device={value}")
        elif arg.startswith("-"):
            raise EffdetsegError(f"unknown option {arg}; train takes overrides (key=value) and --device, see --help")
        else:
            overrides.append(arg)
    from ..engine.experiment import train_config

    cfg, resume_dir = train_config(overrides)
    store = None
    if resume_dir is None:  # a resumed run keeps the plan its config.yaml holds
        from ..engine.plan import plan_training

        _, store = plan_training(cfg, overrides, decode=not show_config)
    if show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from ..engine.run import run_training

    run_training(cfg, resume_dir, command=["effdetseg", "train", *argv], store=store)
    sys.stdout.flush()
    return 0
