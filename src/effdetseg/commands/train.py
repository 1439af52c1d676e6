"""``effdetseg train [hydra overrides]``: train a segmentation model (see configs/train.yaml).

Examples:
  effdetseg train                                   # D0 on synthetic shapes, a few minutes on a CPU
  effdetseg train data=voc_aug data.root=PATH train.model.name=efficientdet_d4_seg
  effdetseg train resume=experiments/NAME           # continue a run exactly where it stopped
  torchrun --nproc_per_node=2 -m effdetseg train …  # DDP
"""
from __future__ import annotations

import sys

HELP = __doc__.replace("``", "") + """
Overrides use Hydra's grammar: key=value, +new.key=value (a key the config does not have),
data=PRESET (synthetic, voc, voc_aug, coco_voc, camvid, folder). `effdetseg train --cfg` prints
the composed config and exits.
"""


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(HELP.strip())
        return 0
    from omegaconf import OmegaConf

    from ..configs.compose import train_config

    show_config = "--cfg" in argv
    overrides = [a for a in argv if a != "--cfg"]
    unknown_flags = [a for a in overrides if a.startswith("-")]
    if unknown_flags:
        from ..errors import EffdetsegError

        raise EffdetsegError(f"unknown option {unknown_flags[0]}; train takes Hydra overrides (key=value), see --help")
    cfg, resume_dir = train_config(overrides)
    if show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    from ..engine.run import run_training

    run_training(cfg, resume_dir)
    sys.stdout.flush()
    return 0
