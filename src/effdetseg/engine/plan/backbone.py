"""What the backbone states: its ImageNet normalization, and its weights fetched before anything is written."""
from __future__ import annotations

import socket
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, open_dict

from ...errors import EffdetsegError, first_line
from ...models import create_model
from .record import TrainingPlan


def backbone_name(model_cfg: DictConfig) -> str:
    """``train.model.backbone``, or the variant's own (built on the meta device: no cost)."""
    if model_cfg.get("backbone"):
        return str(model_cfg.backbone)
    with torch.device("meta"):
        model = create_model(str(model_cfg.name), num_classes=2)
    backbone = getattr(model, "backbone", None)
    return str(getattr(backbone, "name", "")) if backbone is not None else ""


def backbone_normalization(name: str) -> tuple[list[float], list[float]] | None:
    """The mean and std the backbone's ImageNet weights were trained with (timm's pretrained_cfg)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None or cfg.mean is None or cfg.std is None or len(cfg.mean) != 3:
        return None
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]


def fetch_pretrained(name: str) -> None:
    """Make sure timm's ImageNet weights of ``name`` are on disk (downloaded as timm does); one
    error line naming the key and the two ways out when they cannot be had."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if name else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    way_out = ("pass a local ImageNet weights file (train.model.backbone_pretrained=PATH) or train from scratch "
               "on purpose (train.model.backbone_pretrained=false)")
    if not hub_id:
        raise EffdetsegError(f"train.model.backbone_pretrained=auto: timm has no downloadable ImageNet weights for {name!r}; {way_out}")
    import huggingface_hub
    from huggingface_hub import constants

    filenames = ("model.safetensors", "pytorch_model.bin")
    if any(isinstance(huggingface_hub.try_to_load_from_cache(hub_id, f), str) for f in filenames):
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or not _reachable(host):
        raise EffdetsegError(
            f"train.model.backbone_pretrained=auto: the ImageNet weights of {name} ({hub_id}) are not in the local cache "
            f"and {host} cannot be reached; {way_out}"
        )
    errors = []
    for filename in filenames:
        try:
            huggingface_hub.hf_hub_download(hub_id, filename)
            return
        except Exception as e:  # no such file, hub down
            errors.append(first_line(e, with_type=True)[:160])
    raise EffdetsegError(
        f"train.model.backbone_pretrained=auto: the ImageNet weights of {name} ({hub_id}) could not be downloaded "
        f"({errors[0]}); {way_out}"
    )


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` resolves and accepts a connection on port 443 (one try, no retries)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_backbone_statements(cfg: DictConfig, keys: set[str], plan: TrainingPlan) -> None:
    """``data.normalize`` from the backbone and ``backbone_pretrained=auto`` resolved (fetched now)."""
    name = backbone_name(cfg.train.model)
    stats = backbone_normalization(name)
    if stats is not None:
        plan.set("data.normalize.mean", stats[0], f"{name}'s ImageNet normalization (timm)")
        plan.set("data.normalize.std", stats[1], f"{name}'s ImageNet normalization (timm)")
    if str(cfg.train.model.backbone_pretrained) == "auto":
        fetch_pretrained(name)
        with open_dict(cfg):
            cfg.train.model.backbone_pretrained = True


def pretrained_backbone(cfg: DictConfig) -> bool:
    value = cfg.train.model.backbone_pretrained
    return value is True or (isinstance(value, str) and value.lower() not in ("false", ""))
