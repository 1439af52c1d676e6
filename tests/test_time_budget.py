"""``train.max_minutes``: the schedule follows the clock, the run ends inside its budget, resume
continues the clock; schedulers that cannot follow it are refused."""
from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from effdetseg.cli import main as cli
from effdetseg.engine import budget as budget_module
from effdetseg.engine.budget import TimeBudget
from effdetseg.engine.builders import build_scheduler
from effdetseg.engine.schedulers import WarmupCosineLR, WarmupPolyLR
from effdetseg.errors import EffdetsegError


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def _lr_at(scheduler, fraction: float) -> float:
    scheduler.set_time_fraction(fraction)
    scheduler.optimizer.step()
    scheduler.step()
    return scheduler.optimizer.param_groups[0]["lr"]


def test_a_schedule_follows_the_elapsed_fraction_of_the_budget() -> None:
    cosine = WarmupCosineLR(_optimizer(), epochs=1, steps_per_epoch=10, warmup_fraction=0.1, warmup_factor=0.0)
    assert [round(_lr_at(cosine, f), 4) for f in (0.05, 0.1, 0.55, 1.0)] == [0.5, 1.0, 0.5, 0.0]
    # warm-up counted in steps (warmup_epochs), decay in time: the step count does not move the decay
    poly = WarmupPolyLR(_optimizer(), epochs=100, steps_per_epoch=10, warmup_epochs=0.2, power=1.0, warmup_factor=0.0)
    assert _lr_at(poly, 0.0) == pytest.approx(0.5)  # step 1 of 2 warm-up steps
    assert _lr_at(poly, 0.25) == pytest.approx(0.75) and _lr_at(poly, 1.0) == 0.0
    state = poly.state_dict()
    again = WarmupPolyLR(_optimizer(), epochs=100, steps_per_epoch=10, warmup_epochs=0.2, power=1.0, warmup_factor=0.0)
    again.load_state_dict(state)
    assert again.time_fraction == 1.0 and again.last_epoch == poly.last_epoch
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupCosineLR(_optimizer(), epochs=1, steps_per_epoch=10, warmup_fraction=1.0)


def test_a_time_budget_takes_schedulers_that_need_no_length_or_follow_the_clock() -> None:
    for target, extra in [("effdetseg.engine.schedulers.WarmupCosineLR", {}), ("torch.optim.lr_scheduler.ExponentialLR", {"gamma": 0.9})]:
        scheduler, kind = build_scheduler(OmegaConf.create({"_target_": target, **extra}), _optimizer(), 5, 10, time_budget=True)
        assert scheduler is not None and kind.follows_time == target.startswith("effdetseg")
    one_cycle = OmegaConf.create({"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.1})
    with pytest.raises(EffdetsegError, match="OneCycleLR needs the run's length.*train.max_minutes"):
        build_scheduler(one_cycle, _optimizer(), 5, 10, time_budget=True)
    assert build_scheduler(one_cycle, _optimizer(), 5, 10, time_budget=False)[0] is not None


def test_the_clock_keeps_the_reserve_for_the_finish(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: now[0])
    clock = TimeBudget(minutes=1.0)
    clock.reserve_s = 20.0
    now[0] += 20.0
    assert clock.fraction() == pytest.approx(0.5) and not clock.training_over()
    now[0] += 20.0
    assert clock.fraction() == 1.0 and clock.training_over() and clock.remaining() == pytest.approx(20.0)
    clock.resume_from(30.0)  # a resumed run continues from what its checkpoint had used
    assert clock.elapsed() == pytest.approx(30.0)
    assert not TimeBudget(None).enabled and not TimeBudget(None).training_over()


TINY = [
    "train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16", "data.train_samples=16", "data.val_samples=2", "data.batch_size=4",
    "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64", "train.progress=false",
    "validation.grid_images=1", "validation.epoch_step=0", "data.cache=ram",
]


def _finished_minutes(log: str) -> float:
    return float(re.findall(r"finished after ([0-9.]+) of", log)[-1])


@pytest.mark.slow
def test_a_run_bounded_by_time_ends_inside_it_and_resume_continues_the_clock(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert cli(["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=run", "train.max_minutes=0.3"]) == 0
    log = (run / "train.log").read_text()
    assert "a time budget of 0.3 minutes" in log and "data.cache=ram: 16 train + 2 val samples decoded once" in log
    steps = int(re.search(r"budget gave (\d+) optimizer steps", log).group(1))
    assert steps > 4 and _finished_minutes(log) <= 0.3
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val"] and all("val" not in h for h in history[:-1])  # epoch_step=0: validated at the end only
    # The schedule ran out with the time: the last step's lr is near 0 — not exactly, since the run stops
    # when the next step would overrun, and on a loaded machine a step is long.
    assert history[-1]["lr"] < 0.3 * 0.004 and history[-1]["global_step"] == steps
    last = torch.load(run / "last.pth", weights_only=True)
    assert 0 < last["budget_spent_s"] <= 18.0

    # The same budget again: spent, one line. A larger one: the clock goes on from where it stood.
    capsys.readouterr()
    assert cli(["train", f"resume={run}"]) == 2
    assert "raise train.max_minutes" in capsys.readouterr().err
    assert cli(["train", f"resume={run}", "train.max_minutes=0.6"]) == 0
    log = (run / "train.log").read_text()
    used = float(re.search(r"optimizer step \d+, ([0-9.]+) of 0.6 minutes used", log).group(1))
    assert used == pytest.approx(last["budget_spent_s"] / 60, abs=0.1)
    more = int(re.findall(r"budget gave (\d+) optimizer steps", log)[-1])
    assert more > steps and _finished_minutes(log) <= 0.6
