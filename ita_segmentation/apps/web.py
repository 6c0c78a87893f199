"""The web demo page (Gradio): upload an image, name the classes, see the segmentation.

`python app.py` (or `ita-web`; arguments parsed by `web_cli.build_web_parser`) serves the model that `make demo` writes
(`demo_output/model`), or the folder / Hub id given with `--model`, on http://127.0.0.1:7860. The page:

- takes an image file, the classes (one per line, synonyms separated by commas, `[stuff]` at the end of a line
  for a stuff class), or a benchmark's class list, and semantic / panoptic / instance segmentation;
- shows the overlay and a table per class (semantic) or per segment (panoptic, instance), and offers the label
  map (semantic: class ids; panoptic: COCO panoptic's RGB ids; instance: 16-bit ids) as a PNG to download.

Safe to leave running: it listens on 127.0.0.1 unless `--host` says otherwise; the model is loaded once at
launch and no input of the page names a model or a file to read (nor enables remote code); uploads are limited
in bytes and in pixels, checked from the file's header before any decoding (a decompression bomb or a
100-megapixel PNG gets a message, and is never decoded); so are the number and length of class names; and
segmentations run one at a time from a queue of bounded length (a full queue answers "queue is full"), while
the page's light events (filling a class list) bypass it, so a slow request never freezes the page for others.

Everything but the page itself (`build_demo`, `launch`) works without Gradio: `WebLimits`, `parse_classes`,
`check_upload` and `SegmentationService` are plain Python, tested without a browser.
"""

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from image_processing_ita import open_image
from modeling_ita.pipeline import SUBTASKS, ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from processing_ita import parse_vocabulary

from .outputs import write_instance_png, write_label_map, write_panoptic_png
from .visualization import overlay, segment_overlay
from .web_settings import DEFAULT_MODEL, WebLimits

__all__ = [
    "DEFAULT_MODEL",
    "STUFF_MARKER",
    "WebInputError",
    "WebLimits",
    "SegmentationService",
    "benchmark_class_lists",
    "build_demo",
    "check_upload",
    "launch",
    "parse_classes",
    "serve",
]

STUFF_MARKER = "[stuff]"


class WebInputError(ValueError):
    """A visitor's input the page refuses, with the message it shows."""


def parse_classes(text: object, limits: WebLimits) -> tuple[list[str], list[str]]:
    """The class textbox -> `(classes, stuff_classes)`: one class per non-empty line, synonyms separated by
    commas, a line ending in `[stuff]` marks a stuff class. Raises `WebInputError` for no class, too many, a line
    too long, or an invalid vocabulary (empty synonym, duplicate class)."""
    if not isinstance(text, str):
        raise WebInputError("The classes must be text: one class per line")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise WebInputError("Type at least one class (one per line, synonyms separated by commas: sofa,couch)")
    if len(lines) > limits.max_classes:
        raise WebInputError(f"{len(lines)} classes: at most {limits.max_classes} per request")
    classes, stuff = [], []
    for number, line in enumerate(lines, start=1):
        if len(line) > limits.max_class_length:
            raise WebInputError(
                f"Class line {number} has {len(line)} characters: at most {limits.max_class_length} per class"
            )
        is_stuff = line.lower().endswith(STUFF_MARKER)
        if is_stuff:
            line = line[: -len(STUFF_MARKER)].strip()
        name = ",".join(synonym.strip() for synonym in line.split(","))
        classes.append(name)
        if is_stuff:
            stuff.append(name)
    try:
        parse_vocabulary(classes)
    except ValueError as error:
        raise WebInputError(f"Invalid classes: {error}") from None
    return classes, stuff


def check_upload(path: str | os.PathLike[str] | None, limits: WebLimits) -> Image.Image:
    """Open an uploaded image file within `limits` -> an upright, decoded PIL image.

    The file size and the image's width x height (from its header: PIL reads the size without decoding) are
    checked before any pixel is decoded. Raises `WebInputError` naming the problem."""
    if path is None:
        raise WebInputError("Upload an image first")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WebInputError("The upload did not arrive; upload the image again")
    size = os.path.getsize(path)
    if size > limits.max_upload_bytes:
        raise WebInputError(
            f"The file has {size / 1024**2:.1f} MB: at most {limits.max_upload_bytes / 1024**2:.0f} MB per image"
        )
    try:
        with Image.open(path) as header:  # reads the header only
            width, height = header.size
    except Image.DecompressionBombError as error:
        raise WebInputError(f"The image is too large to open safely: {error}") from None
    except Exception:  # noqa: BLE001 - PIL raises many kinds for files that are not images
        raise WebInputError("The file is not an image PIL can read (PNG, JPEG, WebP, BMP, TIFF, ...)") from None
    if width * height > limits.max_pixels:
        raise WebInputError(
            f"The image is {width} x {height} = {width * height / 1e6:.1f} megapixels: at most "
            f"{limits.max_pixels / 1e6:.0f} megapixels"
        )
    try:
        return open_image(path, where="The image")
    except ValueError as error:
        raise WebInputError(str(error).replace(path, "").replace("  ", " ")) from None


def benchmark_class_lists() -> dict[str, str]:
    """The class lists a visitor can pick, as textbox contents: FC-CLIP's lists of the six semantic benchmarks,
    and COCO panoptic's 133 classes with its 53 stuff classes marked."""
    from configuration_ita import COCO_PANOPTIC_VOCABULARY

    from ..evaluation.benchmark_names import BENCHMARK_DISPLAY_NAMES, benchmark_vocabulary_file
    from ..vocabulary_files import read_vocabulary_file

    lists = {}
    # COCO panoptic's categories: the 80 things come first, then the 53 stuff classes.
    lists["COCO panoptic (133)"] = "\n".join(
        name if index < 80 else f"{name} {STUFF_MARKER}" for index, name in enumerate(COCO_PANOPTIC_VOCABULARY)
    )
    # The benchmarks' class lists are read from their files (the registry, `evaluation.benchmarks`, would import
    # `datasets`); FC-CLIP's A-847 and PC-459 lists share a few synonyms, as the benchmarks use them.
    for name, display_name in BENCHMARK_DISPLAY_NAMES.items():
        names = read_vocabulary_file(benchmark_vocabulary_file(name), allow_shared_synonyms=True)
        lists[f"{display_name} ({len(names)})"] = "\n".join(names)
    return lists


class SegmentationService:
    """The page's work without the page: one model, loaded once, and the checks of every request.

    Args:
        model: a model folder or Hub id, fixed for the service's life (loaded without remote code).
        limits: a `WebLimits`.
        device: torch device (default: CUDA if available, else CPU).
        output_dir: where the downloadable label maps are written (default: a new temporary folder).
        segmenter: an already built pipeline to serve instead of loading `model` (tests).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        limits: WebLimits = WebLimits(),
        device: str | None = None,
        output_dir: str | os.PathLike[str] | None = None,
        segmenter: Any = None,
    ) -> None:
        self.limits = limits
        self.model_name = str(model)
        if segmenter is None:
            from transformers import pipeline

            if isinstance(model, Path) and not model.exists():
                raise FileNotFoundError(
                    f"No model at {model}: run `make demo` first (it writes the demo model there), or pass --model"
                )
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            build: Any = pipeline  # the task is registered at run time: no overload of `pipeline` names it
            segmenter = build(
                ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=str(model), device=device, trust_remote_code=False
            )
        self.segmenter = segmenter
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="ita-web-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def segment(
        self, image_path: str | os.PathLike[str] | None, class_text: str, task: str = "semantic"
    ) -> tuple[Image.Image, list[list[Any]], list[str], str]:
        """One request -> `(overlay PIL image, table rows, header, label-map PNG path)`; raises `WebInputError`."""
        if task not in SUBTASKS:
            raise WebInputError(f"Choose one of {', '.join(SUBTASKS)}")
        classes, stuff = parse_classes(class_text, self.limits)
        image = check_upload(image_path, self.limits)
        if task == "semantic":
            result = self.segmenter(image, candidate_labels=classes)
        else:
            result = self.segmenter(image, candidate_labels=classes, subtask=task, stuff_labels=stuff)
        # A new file per request, never overwriting another visitor's.
        handle, label_path = tempfile.mkstemp(prefix=f"{task}-", suffix=".png", dir=self.output_dir)
        os.close(handle)
        if task == "semantic":
            picture = overlay(image, result["label_map"], classes)
            header = ["class", "pixel share (%)", "score"]
            rows = [
                [segment["label"], round(100 * segment["pixel_share"], 2), round(segment["score"], 4)]
                for segment in result["segments"]
            ]
            write_label_map(result["label_map"], len(classes), label_path)
        else:
            masks = [np.asarray(segment["mask"]) == 255 for segment in result["segments"]]
            names = [f"{s['label'].split(',')[0]} {s['score']:.2f}" for s in result["segments"]]
            if task == "instance":  # lowest score drawn first: the best instance on top
                picture = segment_overlay(image, masks[::-1], names[::-1])
            else:
                picture = segment_overlay(image, masks, names)
            header = ["segment", "class", "score", "pixel share (%)", "stuff"]
            rows = [
                [s["id"], s["label"], round(s["score"], 4), round(100 * s["pixel_share"], 2), s["was_fused"]]
                for s in result["segments"]
            ]
            if task == "panoptic":
                write_panoptic_png(result["segment_map"], label_path)
            else:
                write_instance_png(result["segments"], masks, (image.height, image.width), label_path)
        return picture, rows, header, label_path


def build_demo(service: SegmentationService) -> Any:
    """The Gradio page around a `SegmentationService` (requires the `demo` extra: `pip install .[demo]`)."""
    # Gradio otherwise checks its version and sends usage statistics over the network.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    class_lists = benchmark_class_lists()

    def segment(image_file: str | None, class_text: str, task: str) -> tuple[Image.Image, Any, str]:
        try:
            picture, rows, header, label_path = service.segment(image_file, class_text, task)
        except WebInputError as error:
            raise gr.Error(str(error)) from None
        return picture, gr.update(value=rows, headers=header), label_path

    def pick_list(name: str) -> str:
        return class_lists.get(name, "")

    limits = service.limits
    with gr.Blocks(title="ITA open-vocabulary segmentation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# ITA / FC-CLIP open-vocabulary segmentation\n"
            f"Model: `{Path(service.model_name).name}`. Upload an image (at most "
            f"{limits.max_upload_bytes // 1024**2} MB and {limits.max_pixels // 1_000_000} megapixels), name the "
            f"classes (one per line; synonyms separated by commas; end a line with `{STUFF_MARKER}` for a stuff "
            "class such as sky or wall), and choose the task."
        )
        with gr.Row():
            with gr.Column():
                image_file = gr.File(label="Image", file_types=["image"], type="filepath")
                benchmark = gr.Dropdown(choices=list(class_lists), value=None, label="Or pick a benchmark's class list")
                classes = gr.Textbox(
                    label=f"Classes (one per line, at most {limits.max_classes})",
                    lines=8,
                    value="person\nsofa,couch\nwall [stuff]\nfloor [stuff]",
                )
                task = gr.Radio(choices=list(SUBTASKS), value="semantic", label="Task")
                run = gr.Button("Segment", variant="primary")
            with gr.Column():
                picture = gr.Image(label="Overlay", type="pil", format="png", interactive=False)
                table = gr.Dataframe(label="Per class / per segment", interactive=False)
                download = gr.File(label="Label map (PNG)", interactive=False)
        # A light event: no queue, so it answers even while segmentations are waiting.
        benchmark.change(pick_list, inputs=benchmark, outputs=classes, queue=False, api_name=False)  # type: ignore[arg-type]  # False: no API endpoint
        run.click(
            segment,
            inputs=[image_file, classes, task],
            outputs=[picture, table, download],
            api_name="segment",
            concurrency_limit=limits.concurrency,
        )
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    return demo


def launch(service: SegmentationService, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> Any:
    """Build the page and serve it (returns the running `gr.Blocks`; pass `prevent_thread_lock=True` to keep
    the calling thread)."""
    demo = build_demo(service)
    import gradio as gr

    # System fonts: the default theme has the browser fetch its font from a web font service.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=service.limits.max_upload_bytes,
        show_error=True,
        theme=theme,
        **kwargs,
    )
    return demo


def serve(
    model: str | Path = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    limits: WebLimits = WebLimits(),
) -> int:
    """Load `model` and serve the page until stopped (`ita-web`, `python app.py`); returns the exit status (1 the
    model could not be loaded, 2 Gradio is missing)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("The web page needs Gradio: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    try:
        service = SegmentationService(model, limits=limits, device=device)
    except Exception as error:  # a missing folder, an unknown Hub id, a broken checkpoint, ...
        print(f"cannot load model {model}: {error}", file=sys.stderr)
        return 1
    print(f"Serving {model} on http://{host}:{port} (Ctrl+C stops)", flush=True)
    launch(service, host=host, port=port)
    return 0
