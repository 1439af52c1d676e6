"""``effdetseg demo``: a local web page that segments an image the user drops on it.

One Starlette app, served by uvicorn, around one :class:`~effdetseg.Predictor` loaded at start-up:
- ``GET /`` — the page (``demo.html`` beside this module: inline script and style, no outside assets);
- ``GET /api/model`` — model name, classes, upload limits and the model card (markdown text);
- ``POST /api/segment`` — the image file as the raw request body (``X-Filename`` names it in messages)
  → JSON: the classes present with their share of the pixels, the server-side inference time, and
  the decoded image (JPEG) and colour mask (PNG) as data URLs. The page blends those two itself, so
  its opacity slider needs no new request.
A bad upload (empty, not an image, truncated, more bytes or pixels than the limits) is answered with
a 4xx ``{"error": "<file>: what is wrong"}``; the server keeps serving. Images run one at a time.
"""
from __future__ import annotations

import base64
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
from PIL import Image

from ..data.image_io import ImageTooLargeError, decode_image
from ..errors import EffdetsegError
from ..inference.predictor import Predictor
from ..io.labels import LabelSet
from ..io.record import DEFAULT_INPUT_SIZE, ResizeMode
from ..pictures.label_maps import label_image, present_classes
from .card import record_summary

PAGE = Path(__file__).with_name("demo.html")
log = logging.getLogger("effdetseg.demo")


@dataclass(frozen=True)
class UploadLimits:
    """The largest upload the server decodes: file size in bytes, and pixels (width × height, read
    from the image header before decoding)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 16_000_000


class UploadError(Exception):
    """A bad upload: the HTTP status and the message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def shown_labels(predictor: Predictor) -> LabelSet:
    """The record's label set, else the one ``effdetseg predict`` uses for that many classes."""
    return predictor.labels or LabelSet.default_for(predictor.num_classes)


def model_card(checkpoint: Path, predictor: Predictor) -> str:
    """The model card (markdown) of the page's second tab: the ``README.md`` of a model folder, or
    beside the checkpoint file, when there is one (its Hub metadata block left out); else the
    summary of the model's record."""
    readme = checkpoint / "README.md" if checkpoint.is_dir() else checkpoint.with_name("README.md")
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.lstrip().startswith("---"):
            from huggingface_hub import ModelCard

            try:
                text = ModelCard(text, ignore_metadata_errors=True).text.lstrip("\n")
            except Exception:  # a block that is not Hub metadata (YAML that is not a mapping, …): shown as written
                pass
        return text
    record = predictor.record
    title = record.architecture.name if record is not None else checkpoint.name
    source = f"`{checkpoint.name}` ({predictor.backend})"
    return record_summary(title, source, predictor.num_classes, predictor.preprocessing, shown_labels(predictor), record)


def _data_url(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    # Fast settings: this runs for every answer, inside the time the user waits.
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    mime = "jpeg" if fmt == "JPEG" else "png"
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class DemoModel:
    """The Predictor, the label set the page shows and the upload limits: image bytes → the
    page's JSON. One image runs at a time (a lock), whatever the server's threads do."""

    def __init__(self, predictor: Predictor, card: str, limits: UploadLimits = UploadLimits()) -> None:
        self.predictor = predictor
        self.labels = shown_labels(predictor)
        self.card = card
        self.limits = limits
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.predictor.model_config.get("name", Path(self.predictor.source).name))

    def warm_up(self) -> None:
        """One prediction at the input size, so the first user does not wait for lazy initialisation."""
        height, width = self.predictor.preprocessing.size or DEFAULT_INPUT_SIZE
        with self._lock:
            self.predictor.predict(np.zeros((height, width, 3), dtype=np.uint8))

    def info(self) -> dict[str, Any]:
        prep = self.predictor.preprocessing
        return {
            "model": self.name,
            "device": str(self.predictor.device),
            "backend": self.predictor.backend,
            "input": prep.describe(),
            "input_size": list(prep.size) if prep.size and prep.resize is not ResizeMode.original else None,
            "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.labels.names, self.labels.colors))],
            "max_bytes": self.limits.max_bytes,
            "max_pixels": self.limits.max_pixels,
            "card": self.card,
        }

    def check_size(self, name: str, size: int) -> None:
        if size > self.limits.max_bytes:
            raise UploadError(
                413, f"{name}: {size / 2**20:.1f} MB, more than the upload limit of {self.limits.max_bytes / 2**20:g} MB"
            )

    def segment(self, data: bytes, name: str) -> dict[str, Any]:
        """Decode, predict, and describe the result; bad uploads raise ``UploadError``."""
        self.check_size(name, len(data))
        try:
            image = decode_image(data, name, self.limits.max_pixels)
        except ImageTooLargeError as e:
            raise UploadError(413, str(e)) from None
        except EffdetsegError as e:
            raise UploadError(422 if data else 400, str(e)) from None
        with self._lock:
            started = time.perf_counter()
            label_map = self.predictor.predict(image)
            inference_ms = 1000 * (time.perf_counter() - started)
        return {
            "name": name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "inference_ms": round(inference_ms, 1),
            "classes": [
                {"id": i, "name": self.labels.names[i], "color": list(self.labels.colors[i]), "share": share}
                for i, share in present_classes(label_map, self.predictor.num_classes)
            ],
            "image": _data_url(Image.fromarray(image), "JPEG"),
            "mask": _data_url(label_image(label_map, self.labels), "PNG"),
        }


def build_app(model: DemoModel) -> Any:
    """The Starlette application: the page and its two endpoints."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def model_info(request: Request) -> JSONResponse:
        return JSONResponse(model.info())

    async def segment(request: Request) -> JSONResponse:
        name = Path(unquote(request.headers.get("x-filename", "upload"))).name[:200] or "upload"
        try:
            # Read the whole body even past the limit (keeping none of the excess): a server that
            # answers before the client has sent everything makes the client see a reset, not the message.
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size <= model.limits.max_bytes:
                    chunks.append(chunk)
            model.check_size(name, size)
            return JSONResponse(await run_in_threadpool(model.segment, b"".join(chunks), name))
        except UploadError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except Exception as e:  # the model failed: say so on the page and keep serving
            log.exception("segmenting %s failed", name)
            return JSONResponse({"error": f"{name}: the model failed on this image ({type(e).__name__}: {e})"}, status_code=500)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/model", model_info),
            Route("/api/segment", segment, methods=["POST"]),
        ]
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0 = any free port); errors name the address."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise EffdetsegError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = "auto",
    limits: UploadLimits = UploadLimits(),
    backend: str | None = None,
) -> None:
    """Open the port (a busy port fails before the model loads), load the model once, print the
    URL, and serve until interrupted. Requests that arrive while the model loads wait in the backlog."""
    import uvicorn

    checkpoint = Path(checkpoint)
    with listen(host, port) as sock:
        predictor = Predictor(checkpoint, device=device, backend=backend)
        model = DemoModel(predictor, model_card(checkpoint, predictor), limits)
        model.warm_up()
        print(f"effdetseg demo: {model.name} on {predictor.device} ({predictor.backend_note}), serving {url_of(sock)}  (Ctrl+C stops)", flush=True)
        config = uvicorn.Config(build_app(model), log_level="warning", timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[sock])
