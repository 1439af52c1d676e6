"""``effdetseg demo``: serve a local web page that segments the image dropped on it.

The model is loaded once; the page shows the overlay (with an opacity slider), the colour mask, a
legend with each class's share of the pixels, the model's time, and a model-card tab. It listens on
127.0.0.1 unless ``--host`` says otherwise, and prints its URL once it is serving.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import EffdetsegError
from .args import ArgumentParser, add_backend, add_device


def build_parser() -> ArgumentParser:
    from ..sharing.demo import UploadLimits

    defaults = UploadLimits()
    parser = ArgumentParser(
        prog="effdetseg demo",
        description="A local web page that segments an image dropped on it, with a checkpoint's model.",
    )
    parser.add_argument(
        "--checkpoint", required=True,
        help="effdetseg checkpoint, model folder (export --format hub), or an exported .onnx / OpenVINO IR folder / TorchScript file",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 = any free port)")
    add_device(parser)
    add_backend(parser)
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_bytes / 2**20,
                        help=f"largest upload in MB (default: {defaults.max_bytes / 2**20:g})")
    parser.add_argument("--max-megapixels", type=float, default=defaults.max_pixels / 1e6,
                        help=f"largest image in megapixels, width × height / 10⁶ (default: {defaults.max_pixels / 1e6:g})")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise EffdetsegError(f"--port must be 0 … 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise EffdetsegError("--max-upload-mb and --max-megapixels must be positive")
    try:  # the optional dependencies, checked before the model loads
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise EffdetsegError(f"the demo needs its optional dependencies: pip install 'effdetseg[demo]' ({e})") from None
    from ..sharing.demo import UploadLimits, serve

    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6))
    serve(Path(args.checkpoint), host=args.host, port=args.port, device=args.device, limits=limits, backend=args.backend)
    return 0
