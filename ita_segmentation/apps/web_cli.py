"""`ita-web` and `python app.py`: the web page's command line, parsed with the standard library (`--help` and
usage errors answer at once); `web.serve` does the work, imported once the arguments are well formed."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from .web_settings import DEFAULT_MODEL, WebLimits

__all__ = ["build_web_parser", "web"]


def build_web_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The web page's arguments (`ita-web`, `python app.py`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the ITA / FC-CLIP web demo page (Gradio). Listens on 127.0.0.1 unless --host says "
        "otherwise; the model is fixed here, at launch.",
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model folder or Hub id (default: the model `make demo` writes, demo_output/model)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--max-upload-mb", type=float, default=WebLimits.max_upload_bytes / 1024**2)
    parser.add_argument("--max-megapixels", type=float, default=WebLimits.max_pixels / 1e6)
    parser.add_argument("--queue-size", type=int, default=WebLimits.queue_size, help="waiting requests at most")
    return parser


def web(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`ita-web` / `python app.py`: serve the page until stopped; returns the exit status (1 the model could not
    be loaded, 2 usage error or Gradio missing)."""
    args = build_web_parser(prog).parse_args(argv)
    limits = WebLimits(
        max_upload_bytes=int(args.max_upload_mb * 1024**2),
        max_pixels=int(args.max_megapixels * 1e6),
        queue_size=args.queue_size,
    )
    # The default model is a path: a missing one is named with the way to make it (`make demo`).
    model = Path(args.model) if args.model == str(DEFAULT_MODEL) else args.model
    from .web import serve  # torch, the model folder

    return serve(model, host=args.host, port=args.port, device=args.device, limits=limits)
