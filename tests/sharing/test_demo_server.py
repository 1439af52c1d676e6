"""effdetseg.sharing.demo over real HTTP (uvicorn in a thread): the page, the endpoints, bad uploads,
the model card, and the command's start-up errors. The browser test is tests/sharing/test_demo_browser.py."""
from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the demo's optional dependencies: pip install 'effdetseg[demo]'")
uvicorn = pytest.importorskip("uvicorn", reason="the demo's optional dependencies: pip install 'effdetseg[demo]'")

from effdetseg import ModelRecord, Predictor, create_model, save_model  # noqa: E402
from effdetseg.cli import main as cli  # noqa: E402
from effdetseg.engine.metrics import SegmentationMetrics  # noqa: E402
from effdetseg.export.formats import export_onnx  # noqa: E402
from effdetseg.io.labels import LabelSet  # noqa: E402
from effdetseg.io.record import Preprocessing, Provenance  # noqa: E402
from effdetseg.sharing.demo import DemoModel, UploadLimits, build_app, listen, model_card, url_of  # noqa: E402
from conftest import DominantChannel, halves  # noqa: E402

LIMITS = UploadLimits(max_bytes=200_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A demo server around a model whose answer is known (a pixel's class is its strongest colour)."""
    model = DemoModel(Predictor(DominantChannel(), device="cpu", resolution=32), "# Toy model\n\nStrongest channel.\n", LIMITS)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(build_app(model), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the demo server did not start"
    yield url_of(sock)
    server.should_exit = True
    thread.join(10)
    sock.close()


def request(url: str, path: str, data: bytes | None = None, name: str = "photo.png") -> tuple[int, bytes]:
    headers = {"X-Filename": name, "Content-Type": "application/octet-stream"} if data is not None else {}
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def decode_data_url(url: str) -> Image.Image:
    header, payload = url.split(",", 1)
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


NOISE_JPEG = encode(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")


def segment_halves(url: str) -> dict:
    status, body = request(url, "api/segment", encode(halves(40, 60)))
    assert status == 200, body
    return json.loads(body)


def test_page_is_self_contained(url: str) -> None:
    status, body = request(url, "")
    page = body.decode()
    assert status == 200 and "<title>effdetseg demo</title>" in page
    # Nothing is fetched from elsewhere: no external scripts, styles, fonts or images.
    assert 'src="http' not in page and 'href="http' not in page and "@import" not in page and "url(" not in page


def test_model_info(url: str) -> None:
    status, body = request(url, "api/model")
    info = json.loads(body)
    assert status == 200
    assert [c["name"] for c in info["classes"]] == ["class_0", "class_1", "class_2"]  # no label set stored: generic names
    assert info["card"].startswith("# Toy model") and info["input_size"] == [32, 32]
    assert info["max_bytes"] == LIMITS.max_bytes and info["max_pixels"] == LIMITS.max_pixels


def test_good_image_gives_classes_shares_time_image_and_mask(url: str) -> None:
    result = segment_halves(url)
    assert (result["width"], result["height"]) == (60, 40) and result["name"] == "photo.png"
    assert result["inference_ms"] > 0
    shares = {c["name"]: c["share"] for c in result["classes"]}
    assert set(shares) == {"class_0", "class_2"}  # red left half, blue right half
    assert shares["class_0"] == pytest.approx(0.5, abs=0.05) and sum(shares.values()) == pytest.approx(1.0)
    labels = LabelSet.generic(3)
    assert {c["name"]: tuple(c["color"]) for c in result["classes"]} == {
        "class_0": labels.colors[0], "class_2": labels.colors[2]
    }
    image = decode_data_url(result["image"])
    mask = np.asarray(decode_data_url(result["mask"]).convert("RGB"))
    assert image.size == (60, 40) and mask.shape == (40, 60, 3)
    assert tuple(mask[20, 5]) == labels.colors[0] and tuple(mask[20, 55]) == labels.colors[2]


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("notes.jpg", b"these are not the pixels you are looking for\n" * 20, 422, "notes.jpg: not an image"),
        ("cut.jpg", NOISE_JPEG[: len(NOISE_JPEG) // 2], 422, "cut.jpg: unreadable or truncated image"),
        ("empty.png", b"", 400, "empty.png: empty file"),
        ("huge.bin", bytes(LIMITS.max_bytes + 1), 413, "more than the upload limit of"),
        ("wide.png", encode(np.zeros((1000, 1001, 3), np.uint8)), 413, "1001×1000 = 1.0 megapixels, more than the limit of 1"),
    ],
)
def test_bad_upload_is_a_4xx_with_a_message_and_the_server_keeps_serving(
    url: str, name: str, data: bytes, status: int, message: str
) -> None:
    got_status, body = request(url, "api/segment", data, name=name)
    assert got_status == status
    assert message in json.loads(body)["error"]
    assert segment_halves(url)["width"] == 60


@pytest.mark.slow
def test_model_card_summary_or_readme_beside_the_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=3, bifpn_channels=16, head_channels=16)
    labels = LabelSet(("sky", "road", "car"), ((0, 0, 255), (128, 128, 128), (255, 0, 0)))
    matrix = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    metrics = SegmentationMetrics.from_matrix(matrix).to_dict(labels.names, with_matrix=True)
    path = tmp_path / "best.pth"  # what training writes: the record with the validation metrics, and the weights
    save_model(model, path, preprocessing=Preprocessing(size=(96, 128), mean=(0.5,) * 3, std=(0.25,) * 3),
               labels=labels, provenance=Provenance(data="camvid", epoch=7, weights="ema", metrics=metrics))
    predictor = Predictor(path, device="cpu")
    card = model_card(path, predictor)
    assert card.startswith("# efficientdet_d0_seg")
    assert "| bifpn channels | `16` |" in card and "| input | 96×128 |" in card
    assert f"| parameters | {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M |" in card
    assert re.search(r"\| GMACs at 96×128 \| \d+\.\d\d \|", card)
    assert "| normalization | mean (0.500, 0.500, 0.500), std (0.250, 0.250, 0.250) |" in card
    assert "| training data | camvid |" in card and "| epoch | 7 |" in card and "| weights | ema |" in card
    assert f"| mIoU | {100 * metrics['miou']:.2f} % |" in card
    assert f"| 0 | sky | #0000ff | {100 * metrics['per_class']['sky']['iou']:.2f} % |" in card
    assert "| 2 | car | #ff0000 | – |" in card  # never seen: no IoU
    (tmp_path / "README.md").write_text("# My model\n\nTrained on my data.\n")
    assert model_card(path, predictor) == "# My model\n\nTrained on my data.\n"

    plain = tmp_path / "plain" / "d0.safetensors"
    save_model(model, plain)
    summary = model_card(plain, Predictor(plain, device="cpu"))
    assert "Validation" not in summary and "epoch" not in summary
    assert "| input | 512×512 |" in summary and "| 1 | class_1 |" in summary


def test_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["demo", "--checkpoint", str(tmp_path / "missing.pth"), "--port", "0"]) == 2
    assert "missing.pth: model file not found" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli(["demo", "--checkpoint", str(tmp_path / "missing.pth"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.slow
def test_an_exported_onnx_file_serves_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("efficientdet_d0_seg", num_classes=3, bifpn_channels=16, head_channels=16).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, ModelRecord.for_model(model, preprocessing=Preprocessing(size=(64, 64))))
    predictor = Predictor(path, device="cpu")
    card = model_card(path, predictor)
    assert card.startswith("# efficientdet_d0_seg") and "(onnxruntime)" in card and "| input | 64×64 |" in card
    result = DemoModel(predictor, card, LIMITS).segment(encode(halves(40, 60)), "halves.png")
    assert (result["width"], result["height"]) == (60, 40)
    assert sum(c["share"] for c in result["classes"]) == pytest.approx(1.0)
