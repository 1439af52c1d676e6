"""``train.max_minutes``: the schedule follows the clock, the run ends inside its budget, resume
continues the clock; schedulers that cannot follow it are refused."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import sys

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
    clock.reserve_s = 10.0  # estimated before any validation ran: counted twice
    margin = clock.margin_s()
    assert margin == pytest.approx(0.02 * 60)  # 2 % of the budget kept free
    assert clock.finish_s() == pytest.approx(20.0 + margin)
    now[0] += 20.0
    assert clock.fraction() == pytest.approx(20 / (40 - margin)) and not clock.training_over()
    now[0] += 20.0
    assert clock.fraction() == 1.0 and clock.training_over() and clock.remaining() == pytest.approx(20.0)
    clock.resume_from(30.0)  # a resumed run continues from what its checkpoint had used
    assert clock.elapsed() == pytest.approx(30.0)
    assert not TimeBudget(None).enabled and not TimeBudget(None).training_over()


def _steps(clock: TimeBudget, now: list[float], durations: list[float]) -> None:
    for duration in durations:
        now[0] += duration
        clock.step_done()


def test_the_stop_counts_the_slowest_recent_step_and_the_slowdown_since_the_reserve_was_measured(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: now[0])
    clock = TimeBudget(minutes=10.0)  # 600 s, margin 12 s
    clock.reserve_s = 30.0  # estimated on a quiet machine, before the first step: counted twice
    clock.pause()
    _steps(clock, now, [0.0] + [1.0] * 10)  # the epoch's first call only starts the clock
    assert clock.slowdown() == 1.0 and clock.next_step_s() == 1.0
    _steps(clock, now, [1.0, 1.0, 9.0, 1.0])  # one step held up by another process
    assert clock.next_step_s() == 9.0  # not the last step's 1 s
    assert clock.finish_s() == pytest.approx(60.0 + 12.0)
    # Another process takes the cores: steps (and so the final validation) take 3× as long.
    _steps(clock, now, [3.0] * 5)
    assert clock.slowdown() == pytest.approx(3.0) and clock.finish_s() == pytest.approx(180.0 + 12.0)
    now[0] = 600.0 - 9.0 - 192.0 - 0.5
    assert not clock.training_over()
    now[0] += 1.0
    assert clock.training_over()  # where the old rule (last step + reserve) had 150 s more to go
    # A validation that ran under the load is the new reserve and reference: nothing counted twice.
    clock.reserve_s = 90.0
    assert clock.slowdown() == 1.0 and clock.finish_s() == pytest.approx(102.0)


def test_the_stop_counts_the_end_of_an_epoch_before_its_last_step(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(budget_module.time, "monotonic", lambda: now[0])
    clock = TimeBudget(minutes=1.0)  # 60 s, margin 1.2 s
    clock.reserve_s = 5.0  # counted twice: 10 s
    for epoch in range(2):
        clock.pause()
        _steps(clock, now, [0.0, 1.0, 1.0, 1.0])  # four steps an epoch
        now[0] += 6.0  # the epoch's validation and checkpoint
    clock.pause()
    _steps(clock, now, [0.0, 1.0, 1.0])  # 3rd epoch, step 3 of 4: no epoch end before the next step
    now[0] = 60.0 - 1.0 - 11.2 - 0.5
    assert not clock.training_over()
    _steps(clock, now, [0.01])  # its last step: the 6 s of the epoch's end come before any other step
    assert clock.training_over()


TINY = [
    "train.model.backbone=mobilenetv3_small_050", "+train.model.overrides.bifpn_channels=16",
    "+train.model.overrides.head_channels=16", "data.train_samples=16", "data.val_samples=2", "data.batch_size=4",
    "data.preprocessing.resize_height=64", "data.preprocessing.resize_width=64", "train.progress=false",
    "validation.grid_images=1", "validation.epoch_step=0", "data.cache=ram",
]


def _finished_minutes(log: str) -> float:
    return float(re.findall(r"finished after ([0-9.]+) of", log)[-1])


# Half a minute: under a CPU hog and the rest of a 2-core machine's load, setting up (building the
# model, timing a validation image) alone has taken 12 s. train.threads=auto leaves the hog's core
# out (with two threads on two cores beside a hog, a step of this tiny network took 4 s, not 0.1 s).
BUDGET = 0.5


@pytest.fixture
def cpu_hog():
    """Another process that takes a core for as long as the test runs (a machine shared with other work)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield hog
    hog.kill()
    hog.wait()


def _snapshot(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_run_bounded_by_time_ends_inside_it_and_resume_continues_the_clock(tmp_path, capsys, cpu_hog) -> None:
    run = tmp_path / "run"
    assert cli(["train", *TINY, f"experiments_dir={tmp_path}", "experiment_name=run", f"train.max_minutes={BUDGET}"]) == 0
    log = (run / "train.log").read_text()
    assert f"a time budget of {BUDGET:g} minutes" in log and "data.cache=ram: 16 train + 2 val samples decoded once" in log
    steps = int(re.search(r"budget gave (\d+) optimizer steps", log).group(1))
    assert steps > 4 and _finished_minutes(log) <= BUDGET
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val"] and all("val" not in h for h in history[:-1])  # epoch_step=0: validated at the end only
    # The schedule ran out with the time: the last step's lr is near 0 — not exactly, since the run stops
    # when the next step would overrun, and on a loaded machine a step is long.
    assert history[-1]["lr"] < 0.3 * 0.004 and history[-1]["global_step"] == steps
    last = torch.load(run / "last.pth", weights_only=True)
    assert 0 < last["budget_spent_s"] <= 60 * BUDGET

    # A budget no larger than the time used: spent, one line. (The same budget again may still hold
    # a few steps: the first run keeps a reserve estimated under the hog's load, and a resume that
    # measures a lighter load trains on.) A larger one: the clock goes on from where it stood.
    capsys.readouterr()
    before = _snapshot(run)
    assert cli(["train", f"resume={run}", f"train.max_minutes={last['budget_spent_s'] / 60:.4f}"]) == 2
    assert "raise train.max_minutes" in capsys.readouterr().err
    assert _snapshot(run) == before  # refused: nothing in the folder changed
    assert cpu_hog.poll() is None  # the other process was there all along
    assert cli(["train", f"resume={run}", f"train.max_minutes={2 * BUDGET}"]) == 0
    log = (run / "train.log").read_text()
    used = float(re.search(rf"optimizer step \d+, ([0-9.]+) of {2 * BUDGET:g} minutes used", log).group(1))
    assert used == pytest.approx(last["budget_spent_s"] / 60, abs=0.1)
    more = int(re.findall(r"budget gave (\d+) optimizer steps", log)[-1])
    assert more > steps and _finished_minutes(log) <= 2 * BUDGET


def test_auto_threads_leave_out_the_cores_another_process_keeps_busy(cpu_hog) -> None:
    from effdetseg.engine import loaders

    cores = loaders.available_cores()
    if cores < 2:
        pytest.skip("one core: nothing to leave out")
    time.sleep(0.3)  # the hog is running
    assert loaders.busy_cores() >= 0.7
    plan = loaders.plan_cpu(torch.device("cpu"), "auto", "auto", cached=True)
    assert plan.threads <= cores - 1 and "busy" in plan.why
    assert loaders.plan_cpu(torch.device("cpu"), 2, "auto", cached=True).threads == 2  # a number is kept
    assert plan.follow_free_cores and not loaders.plan_cpu(torch.device("cpu"), 2, "auto", cached=True).follow_free_cores
    assert not loaders.plan_cpu(torch.device("cpu"), "auto", "auto", cached=False).follow_free_cores  # a worker's time is not its own


def test_auto_threads_follow_a_process_that_starts_or_stops_while_training(monkeypatch) -> None:
    from effdetseg.engine import loaders

    start = time.monotonic() - 100.0  # the samples below lie in the past

    def sample(seconds: float, own_cpu_s: float, busy_s: tuple[float, float]):  # two CPUs, 100 ticks a second
        return start + seconds, own_cpu_s, {cpu: (int(100 * busy_s[cpu]), int(100 * seconds)) for cpu in (0, 1)}

    threads = torch.get_num_threads()
    try:
        watch = loaders.CoreWatch(cores=2, threads=2, every_s=0.0)
        watch.cpus, watch._last = {0, 1}, sample(0, 0.0, (0, 0))
        # 10 s with both CPUs busy, 12 s of them this process's: another process took 0.8 of a core
        monkeypatch.setattr(watch, "_sample", lambda: sample(10, 12.0, (10, 10)))
        line = watch.check()
        assert watch.threads == 1 and torch.get_num_threads() == 1 and "0.8 core(s)" in line
        # it left: one CPU busy, all of it this process's one thread
        monkeypatch.setattr(watch, "_sample", lambda: sample(20, 22.0, (20, 10)))
        assert watch.check() is not None and watch.threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(watch, "_sample", lambda: sample(30, 42.0, (30, 20)))
        assert watch.check() is None  # nothing changed: nothing to say
        watch.every_s = 3600.0
        monkeypatch.setattr(watch, "_sample", lambda: pytest.fail("counted before every_s had passed"))
        assert watch.check() is None
    finally:
        torch.set_num_threads(threads)
