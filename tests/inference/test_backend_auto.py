"""`--backend auto` on the CPU picks the fastest installed backend by measuring them on the actual
input, once per input shape: the selection logic with fake runners and a fake clock (no timings),
and the Predictor wiring with the real eager and ONNX Runtime backends."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from effdetseg.errors import EffdetsegError
from effdetseg.inference.auto import AutoRunner
from effdetseg.inference.backends import resolve_backend
from effdetseg.inference.predictor import Predictor


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_runner(clock: FakeClock, cost_ms: Callable[[torch.Tensor], float], value: float, calls: list[str], name: str):
    """A runner that 'takes' cost_ms(x) on the fake clock and returns logits filled with value."""
    def run(x: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        clock.now += cost_ms(x) / 1000
        return torch.full((x.shape[0], 2, *x.shape[2:]), value)
    return run


def test_auto_picks_the_fastest_per_shape_and_builds_each_backend_once() -> None:
    clock, calls, built, notes = FakeClock(), [], [], []
    # torch is fast on small inputs, openvino on large ones; onnxruntime is never fastest
    costs = {"torch": lambda x: x.shape[-1] * 1.0, "onnxruntime": lambda x: 500.0, "openvino": lambda x: 100.0}
    values = {"torch": 1.0, "onnxruntime": 2.0, "openvino": 3.0}

    def factory(name: str):
        def build():
            built.append(name)
            return fake_runner(clock, costs[name], values[name], calls, name)
        return build

    auto = AutoRunner({name: factory(name) for name in costs}, rounds=3, warmup=1, log=notes.append, timer=clock)
    assert auto.backend == "auto" and built == []  # nothing built before the first input
    small, large = torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 640)
    assert float(auto(small).mean()) == values["torch"] and auto.backend == "torch"
    assert sorted(built) == sorted(costs)
    # each: a warm-up, then 3 timed calls each after an untimed one of its own; the chosen one then runs the input
    assert (calls.count("torch"), calls.count("onnxruntime"), calls.count("openvino")) == (8, 7, 7)
    assert len(notes) == 1 and notes[0].startswith("backend torch (auto: fastest measured on the CPU for input 1×3×8×16")
    assert "torch 16.0 ms, openvino 100.0 ms, onnxruntime 500.0 ms" in notes[0]
    calls.clear()
    auto(small)
    assert calls == ["torch"] and len(notes) == 1  # the shape is not measured again
    assert float(auto(large).mean()) == values["openvino"] and auto.backend == "openvino"  # a new shape: measured again
    assert len(notes) == 2 and notes[1].startswith("backend openvino") and sorted(built) == sorted(costs)
    calls.clear()
    auto(small)
    assert calls == ["torch"] and auto.backend == "torch"


def test_auto_uses_the_median_not_one_lucky_call() -> None:
    clock, calls = FakeClock(), []
    jitter = iter([1.0, 1.0, 300.0, 300.0])  # onnxruntime: fast twice (warm-up, 1st), then slow twice
    costs = {"torch": lambda x: 50.0, "onnxruntime": lambda x: next(jitter)}
    auto = AutoRunner({n: (lambda n=n: fake_runner(clock, costs[n], 0.0, calls, n)) for n in costs},
                      rounds=3, warmup=1, settle=0, timer=clock)
    auto(torch.zeros(1, 3, 4, 4))
    assert auto.backend == "torch"  # onnxruntime's median (300) loses to torch's 50, its minimum (1) would not


def test_auto_leaves_out_a_backend_that_fails_and_says_so() -> None:
    clock, calls = FakeClock(), []

    def broken() -> Callable[[torch.Tensor], torch.Tensor]:
        raise RuntimeError("cannot compile Pad with dynamic pads\nsecond line")

    def fails_on_run(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of memory")

    auto = AutoRunner({"openvino": broken, "onnxruntime": lambda: fails_on_run,
                       "torch": lambda: fake_runner(clock, lambda x: 900.0, 5.0, calls, "torch")}, timer=clock)
    assert float(auto(torch.zeros(1, 3, 4, 4)).mean()) == 5.0 and auto.backend == "torch"
    assert "openvino left out: cannot compile Pad with dynamic pads" in auto.note and "second line" not in auto.note
    assert "onnxruntime left out: out of memory" in auto.note
    nothing = AutoRunner({"openvino": broken}, timer=clock)
    with pytest.raises(EffdetsegError, match="no backend could run the model: openvino: cannot compile"):
        nothing(torch.zeros(1, 3, 4, 4))


def test_auto_candidates_are_the_installed_backends_of_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr("effdetseg.inference.backends.openvino_installed", lambda: True)
    assert resolve_backend("auto", "torch", cpu).candidates == ("torch", "onnxruntime", "openvino")
    assert resolve_backend("auto", "onnx", cpu).candidates == ("onnxruntime", "openvino")
    assert resolve_backend("auto", "openvino", cpu).backend == "openvino"  # one candidate: nothing to measure
    assert resolve_backend("auto", "torch", torch.device("cuda")).backend == "torch"
    monkeypatch.setattr("effdetseg.inference.backends.openvino_installed", lambda: False)
    assert resolve_backend("auto", "torch", cpu).candidates == ("torch", "onnxruntime")
    assert resolve_backend("auto", "onnx", cpu).backend == "onnxruntime"


def test_predictor_auto_measures_on_the_first_input_and_predicts_what_eager_does(
    tiny_camvid_network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("effdetseg.inference.backends.openvino_installed", lambda: False)  # eager vs ONNX Runtime here
    notes: list[str] = []
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    eager = Predictor(tiny_camvid_network, device="cpu", resolution=(64, 96))
    auto = Predictor(tiny_camvid_network, device="cpu", backend="auto", resolution=(64, 96), log=notes.append)
    assert auto.backend == "auto" and notes == []
    labels = auto.predict(image)
    assert auto.backend in ("torch", "onnxruntime") and len(notes) == 1 and notes[0] == auto.backend_note
    assert "1×3×64×96" in notes[0] and "torch " in notes[0] and "onnxruntime " in notes[0]
    assert (labels == eager.predict(image)).mean() >= 0.999


def test_auto_remembers_its_choice_beside_the_model_per_machine(tmp_path, monkeypatch) -> None:
    import json
    import os

    from effdetseg.inference import auto as auto_backend
    from effdetseg.inference.auto import ChoiceCache

    model = tmp_path / "model.onnx"
    model.write_bytes(b"an exported model")
    clock, calls, notes = FakeClock(), [], []
    costs = {"torch": lambda x: 50.0, "onnxruntime": lambda x: 20.0, "openvino": lambda x: 30.0}

    def auto() -> AutoRunner:
        return AutoRunner({n: (lambda n=n: fake_runner(clock, costs[n], 0.0, calls, n)) for n in costs},
                          timer=clock, log=notes.append, cache=ChoiceCache(model))

    x = torch.zeros(1, 3, 8, 8)
    auto()(x)
    cache = tmp_path / "model.onnx.auto-backend.json"
    stored = json.loads(cache.read_text())
    (machine, shapes), = stored["machines"].items()
    assert shapes["1x3x8x8"]["backend"] == "onnxruntime" and "cores" in machine
    # The next process on this machine runs the remembered choice at once: nothing measured.
    calls.clear()
    runner = auto()
    runner(x)
    assert calls == ["onnxruntime"] and runner.backend == "onnxruntime" and "remembers" in notes[-1]
    # Another machine (another CPU, other versions): measured again, and remembered beside the first.
    costs["openvino"] = lambda x: 5.0
    monkeypatch.setattr(auto_backend, "machine_fingerprint", lambda threads=None: "another CPU")
    calls.clear()
    runner = auto()
    runner(x)
    assert runner.backend == "openvino" and calls.count("torch") > 1
    assert set(json.loads(cache.read_text())["machines"]) == {machine, "another CPU"}
    # The model file replaced (a new export): measured again. A tampered entry is never trusted.
    os.utime(model, ns=(1, 1))
    calls.clear()
    auto()(x)
    assert calls.count("torch") > 1
    cache.write_text(json.dumps({"model": "x", "machines": {"another CPU": {"1x3x8x8": {"backend": "os.system"}}}}))
    assert ChoiceCache(model).get((1, 3, 8, 8)) is None
    # A folder that cannot be written only means measuring each time.
    from effdetseg.errors import EffdetsegError
    from effdetseg.io import files

    def read_only(path, text):
        raise EffdetsegError(f"{path}: cannot write (Read-only file system)")

    monkeypatch.setattr(files, "write_text_atomic", read_only)
    runner = auto()
    runner(torch.zeros(1, 3, 4, 4))
    assert runner.backend == "openvino"
