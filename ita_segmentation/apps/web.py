"""The web demo page (Gradio): upload an image, name the classes, see the segmentation.

`python app.py` (or `ita-web`; arguments parsed and checked by `web_cli`) serves the model that `make demo` writes
(`demo_output/model`), or the folder / Hub id given with `--model`, on http://127.0.0.1:7860. The page:

- names the model it serves (the folder or the Hub id) in its header;
- takes an image file (previewed as soon as it is uploaded), the classes (one per line, synonyms separated by
  commas, `[stuff]` at the end of a line for a stuff class), or a benchmark's class list, and semantic /
  panoptic / instance segmentation, with the score threshold of panoptic and instance on a slider;
- shows the overlay (its legend beside it, no toolbar over it), a note (for panoptic and instance: how many
  segments reached the threshold, and when none did, that lowering it shows weaker ones), a table per class
  (semantic) or per segment (panoptic, instance) whose long synonym lists are shortened and wrapped in a fixed
  column, and offers the label map (semantic: class ids; panoptic: COCO panoptic's RGB ids; instance: 16-bit ids)
  and the overlay as PNGs to download.

Safe to leave running: it listens on 127.0.0.1 unless `--host` says otherwise; the model is loaded once at
launch and no input of the page names a model or a file to read (nor enables remote code); uploads are limited
in bytes and in pixels, checked from the file's header before any decoding (a decompression bomb or a
100-megapixel PNG gets a message, and is never decoded); so are the number and length of class names; and
segmentations run one at a time from a queue of bounded length (a full queue answers "queue is full"), while
the page's light events (filling a class list, the preview) bypass it, so a slow request never freezes the page
for others. Every refused request is shown on the page and logged as one line on the server's standard error
(`ita-web: refused a request: ...`), never with a traceback.

Everything but the page itself (`build_demo`, `launch`) works without Gradio: `WebLimits`, `parse_classes`,
`check_upload`, `check_threshold` and `SegmentationService` are plain Python, tested without a browser.
"""

import html
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from image_processing_ita import open_image
from modeling_ita.pipeline import DEFAULT_THRESHOLDS, SUBTASKS, ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from processing_ita import parse_vocabulary

from ..errors import ITADataError, ITAUsageError, user_error
from .outputs import write_instance_png, write_label_map, write_panoptic_png
from .visualization import overlay, segment_overlay
from .web_settings import DEFAULT_MODEL, WebLimits

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_THRESHOLDS",
    "STUFF_MARKER",
    "PageResult",
    "WebInputError",
    "WebLimits",
    "SegmentationService",
    "benchmark_class_lists",
    "build_demo",
    "check_threshold",
    "check_upload",
    "launch",
    "log_refusal",
    "megabytes",
    "model_display_name",
    "parse_classes",
    "serve",
    "table_name",
]

STUFF_MARKER = "[stuff]"


# Characters of a class's synonyms shown in the table; the rest is counted ("+12 more").
TABLE_NAME_LENGTH = 60

# Width of the table's columns: the names wrap inside theirs, the numbers keep theirs in view.
_COLUMN_WIDTHS: dict[str, list[str | int]] = {
    "semantic": ["56%", "24%", "20%"],
    "segments": ["15%", "35%", "14%", "22%", "14%"],
}

# The longest side of the upload's preview, in pixels.
PREVIEW_SIZE = 512

_LOG_PREFIX = "ita-web: refused a request: "


class WebInputError(ITAUsageError, ValueError):
    """A visitor's input the page refuses, with the message it shows (a usage error of the page: it is found
    before the segmentation runs)."""


def log_refusal(error: BaseException | str, stream: Any = None) -> str:
    """Log a refused request as one line on the server's standard error (no traceback); returns its message."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{_LOG_PREFIX}{message}", file=sys.stderr if stream is None else stream, flush=True)
    return message


def megabytes(size: int) -> str:
    """`size` bytes in MB, as the page's messages write it (`20`, `0.5`, `0.0095`)."""
    return f"{size / 1024**2:.3g}"


def model_display_name(model: str | os.PathLike[str]) -> str:
    """How the page names the model it serves: a folder's path (relative to the working folder when inside it),
    or the Hub id as given."""
    text = os.fspath(model)
    path = Path(text)
    if not path.is_absolute():
        return text
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return text


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
            f"The file has {megabytes(size)} MB: at most {megabytes(limits.max_upload_bytes)} MB per image"
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
            f"{limits.max_pixels / 1e6:g} megapixels"
        )
    try:
        return open_image(path, where="The image")
    except ValueError as error:
        raise WebInputError(str(error).replace(path, "").replace("  ", " ")) from None


def check_threshold(value: object, task: str) -> float | None:
    """The score threshold of a request: None for semantic segmentation (which has none, whatever is given),
    the task's default for None, else a number from 0 to 1. Raises `WebInputError`."""
    if task == "semantic":
        return None
    if value is None:
        return DEFAULT_THRESHOLDS[task]
    try:
        number = float(value)  # type: ignore[arg-type]  # checked here: the API may send anything
    except (TypeError, ValueError):
        raise WebInputError(f"The threshold must be a number from 0 to 1, not {value!r}") from None
    if math.isnan(number) or not 0 <= number <= 1:
        raise WebInputError(f"The threshold must be a number from 0 to 1, not {value!r}")
    return number


def table_name(label: str, length: int = TABLE_NAME_LENGTH) -> str:
    """A class's synonyms as the table shows them: `", "`-separated, the synonyms beyond `length` characters
    counted (`"sofa, couch, settee (+12 more)"`), a first synonym longer than that cut with an ellipsis."""
    synonyms = [synonym.strip() for synonym in label.split(",")]
    shown: list[str] = []
    used = 0
    for synonym in synonyms:
        if shown and used + len(synonym) + 2 > length:
            break
        shown.append(synonym)
        used += len(synonym) + 2 * (len(shown) > 1)
    text = ", ".join(shown)
    if len(text) > length:
        text = text[: length - 1].rstrip() + "…"
    if len(shown) < len(synonyms):
        text += f" (+{len(synonyms) - len(shown)} more)"
    return text


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


class PageResult(NamedTuple):
    """What one request shows: the overlay, the table (rows, header, column widths), the files to download
    (label map, overlay) and a note (how many segments reached the threshold; why there are none)."""

    picture: Image.Image
    rows: list[list[Any]]
    header: list[str]
    column_widths: list[str | int]
    label_path: str
    overlay_path: str
    note: str


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
                raise ITAUsageError(
                    f"no model at {model}: run `make demo` first (it writes the demo model there), or pass --model"
                )
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            build: Any = pipeline  # the task is registered at run time: no overload of `pipeline` names it
            try:
                segmenter = build(
                    ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=str(model), device=device, trust_remote_code=False
                )
            except (OSError, ValueError) as error:  # an unknown Hub id, a broken checkpoint, ...
                found = user_error(error)
                raise ITADataError(f"cannot load model {model}: {found or error}") from None
        self.segmenter = segmenter
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="ita-web-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)

    @property
    def display_name(self) -> str:
        """The model's name as the page shows it (`model_display_name`)."""
        return model_display_name(self.model_name)

    def preview(self, image_path: str | os.PathLike[str] | None) -> Image.Image | None:
        """The upload, checked as a segmentation request checks it, at most `PREVIEW_SIZE` pixels on its longest
        side (None when there is no upload); raises `WebInputError`."""
        if image_path is None:
            return None
        image = check_upload(image_path, self.limits)
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        return image

    def _new_file(self, prefix: str) -> str:
        # A new file per request, never overwriting another visitor's.
        handle, path = tempfile.mkstemp(prefix=prefix, suffix=".png", dir=self.output_dir)
        os.close(handle)
        return path

    def segment(
        self,
        image_path: str | os.PathLike[str] | None,
        class_text: str,
        task: str = "semantic",
        threshold: object = None,
    ) -> PageResult:
        """One request -> a `PageResult`; raises `WebInputError`. `threshold` is the score a panoptic or instance
        segment must reach (None: the task's default, `DEFAULT_THRESHOLDS`); semantic segmentation ignores it."""
        if task not in SUBTASKS:
            raise WebInputError(f"Choose one of {', '.join(SUBTASKS)}")
        score_threshold = check_threshold(threshold, task)
        classes, stuff = parse_classes(class_text, self.limits)
        image = check_upload(image_path, self.limits)
        if task == "semantic":
            result = self.segmenter(image, candidate_labels=classes)
        else:
            result = self.segmenter(
                image, candidate_labels=classes, subtask=task, stuff_labels=stuff, threshold=score_threshold
            )
        label_path = self._new_file(f"{task}-")
        segments = result["segments"]
        if task == "semantic":
            picture = overlay(image, result["label_map"], classes)
            header = ["class", "pixel share (%)", "score"]
            rows = [[table_name(s["label"]), round(100 * s["pixel_share"], 2), round(s["score"], 4)] for s in segments]
            write_label_map(result["label_map"], len(classes), label_path)
            widths = _COLUMN_WIDTHS["semantic"]
            note = f"{len(segments)} of {len(classes)} classes present."
        else:
            masks = [np.asarray(segment["mask"]) == 255 for segment in segments]
            names = [f"{s['label'].split(',')[0]} {s['score']:.2f}" for s in segments]
            if task == "instance":  # lowest score drawn first: the best instance on top
                picture = segment_overlay(image, masks[::-1], names[::-1])
            else:
                picture = segment_overlay(image, masks, names)
            header = ["segment", "class", "score", "pixel share (%)", "stuff"]
            rows = [
                [
                    s["id"],
                    table_name(s["label"]),
                    round(s["score"], 4),
                    round(100 * s["pixel_share"], 2),
                    s["was_fused"],
                ]
                for s in segments
            ]
            if task == "panoptic":
                write_panoptic_png(result["segment_map"], label_path)
            else:
                write_instance_png(segments, masks, (image.height, image.width), label_path)
            widths = _COLUMN_WIDTHS["segments"]
            note = _segments_note(task, len(segments), score_threshold)
        overlay_path = self._new_file(f"{task}-overlay-")
        picture.save(overlay_path)
        return PageResult(picture, rows, header, widths, label_path, overlay_path, note)


def _segments_note(task: str, count: int, threshold: float | None) -> str:
    """The note of a panoptic or instance result: the count at the threshold, or why there is no segment."""
    if count:
        return f"{count} segment{'s' * (count != 1)} reached the score threshold {threshold:.2f}."
    return (
        f"No segment reached the score threshold {threshold:.2f}: lower the threshold (the slider) and segment "
        f"again to see weaker {task} segments; a model trained only briefly (such as `make demo`'s) scores low."
    )


def build_demo(service: SegmentationService) -> Any:
    """The Gradio page around a `SegmentationService` (requires the `demo` extra: `pip install .[demo]`)."""
    # Gradio otherwise checks its version and sends usage statistics over the network.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    class_lists = benchmark_class_lists()

    def refuse(error: BaseException) -> Exception:
        message = log_refusal(error)
        # The page shows the message as HTML: a class name such as `<b>` is shown as typed.
        return gr.Error(html.escape(message, quote=False), duration=None, print_exception=False)

    def segment(
        image_file: str | None, class_text: str, task: str, threshold: float | None
    ) -> tuple[Image.Image, Any, list[str], str]:
        try:
            result = service.segment(image_file, class_text, task, threshold)
        except WebInputError as error:
            raise refuse(error) from None
        table = gr.update(value=result.rows, headers=result.header, column_widths=result.column_widths)
        return result.picture, table, [result.label_path, result.overlay_path], result.note

    def preview(image_file: str | None) -> Image.Image | None:
        try:
            return service.preview(image_file)
        except WebInputError as error:
            raise refuse(error) from None

    def pick_list(name: str) -> str:
        return class_lists.get(name, "")

    def pick_task(task: str) -> Any:
        if task == "semantic":
            return gr.update(visible=False)
        return gr.update(visible=True, value=DEFAULT_THRESHOLDS[task], label=f"Score threshold ({task})")

    limits = service.limits
    shown_name = service.display_name.replace("`", "'")  # in a code span: underscores and stars stay as typed
    with gr.Blocks(title=f"ITA segmentation: {service.display_name}", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# ITA / FC-CLIP open-vocabulary segmentation\n"
            f"Model: `{shown_name}`. Upload an image (at most "
            f"{megabytes(limits.max_upload_bytes)} MB and {limits.max_pixels / 1e6:g} megapixels), name the "
            f"classes (one per line; synonyms separated by commas; end a line with `{STUFF_MARKER}` for a stuff "
            "class such as sky or wall), and choose the task.",
            elem_id="header",
        )
        with gr.Row():
            with gr.Column():
                image_file = gr.File(label="Image", file_types=["image"], type="filepath")
                shown = gr.Image(
                    label="Your image", type="pil", interactive=False, buttons=[], height=240, elem_id="preview"
                )
                benchmark = gr.Dropdown(choices=list(class_lists), value=None, label="Or pick a benchmark's class list")
                classes = gr.Textbox(
                    label=f"Classes (one per line, at most {limits.max_classes})",
                    lines=8,
                    value="person\nsofa,couch\nwall [stuff]\nfloor [stuff]",
                )
                task = gr.Radio(choices=list(SUBTASKS), value="semantic", label="Task")
                threshold = gr.Slider(
                    minimum=0.0,
                    maximum=1.0,
                    step=0.05,
                    value=DEFAULT_THRESHOLDS["panoptic"],
                    label="Score threshold (panoptic)",
                    info="the score a segment must reach to be shown (panoptic and instance only)",
                    visible=False,
                )
                run = gr.Button("Segment", variant="primary")
            with gr.Column():
                # No toolbar: its icons would hide the legend's first entry (the overlay is offered below).
                picture = gr.Image(
                    label="Overlay",
                    type="pil",
                    format="png",
                    interactive=False,
                    buttons=[],
                    height=420,
                    elem_id="overlay",
                )
                note = gr.Markdown(elem_id="note")
                table = gr.Dataframe(
                    label="Per class / per segment",
                    elem_id="table",
                    interactive=False,
                    wrap=True,
                    headers=["class", "pixel share (%)", "score"],
                    column_widths=_COLUMN_WIDTHS["semantic"],
                )
                download = gr.File(label="Label map and overlay (PNG)", file_count="multiple", interactive=False)
        # Light events: no queue, so they answer even while segmentations are waiting.
        benchmark.change(pick_list, inputs=benchmark, outputs=classes, queue=False, api_name=False)  # type: ignore[arg-type]  # False: no API endpoint
        task.change(pick_task, inputs=task, outputs=threshold, queue=False, api_name=False)  # type: ignore[arg-type]
        # Queued (a refusal's message shows only for queued events) but never behind a segmentation.
        image_file.change(
            preview,
            inputs=image_file,
            outputs=shown,
            api_name="preview",
            concurrency_limit=None,
            concurrency_id="preview",
        )
        run.click(
            segment,
            inputs=[image_file, classes, task, threshold],
            outputs=[picture, table, download, note],
            api_name="segment",
            concurrency_limit=limits.concurrency,
        )
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)

    # Gradio's components refuse some inputs themselves before `segment` runs (a threshold beyond the slider,
    # a task that is not a choice, a wrong number of inputs through the API), with a traceback on the console:
    # refused here as the page's own refusals are, in one line.
    check_inputs = demo.preprocess_data

    async def preprocess_data(*args: Any, **kwargs: Any) -> Any:
        try:
            return await check_inputs(*args, **kwargs)
        except gr.Error as error:
            raise refuse(WebInputError(str(error.message))) from None
        except (TypeError, ValueError) as error:
            raise refuse(WebInputError(f"The request's inputs were refused: {error}")) from None

    demo.preprocess_data = preprocess_data
    return demo


class _LogTooLargeUploads:
    """ASGI middleware: Gradio itself refuses an upload over the size limit (HTTP 413) before the page's code
    sees it; this logs that refusal as the page's own refusals are logged, in one line."""

    def __init__(self, app: Any, limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_and_log(message: Any) -> None:
            if message.get("type") == "http.response.start" and message.get("status") == 413:
                log_refusal(
                    f"An upload was larger than the limit: at most {megabytes(self.limit_bytes)} MB per image "
                    "(HTTP 413)"
                )
            await send(message)

        await self.app(scope, receive, send_and_log)


def launch(service: SegmentationService, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> Any:
    """Build the page and serve it (returns the running `gr.Blocks`; pass `prevent_thread_lock=True` to keep
    the calling thread). A port taken since `web_cli.check_listen_address` looked is an `ITAUsageError`."""
    demo = build_demo(service)
    import gradio as gr

    # System fonts: the default theme has the browser fetch its font from a web font service.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    from starlette.middleware import Middleware

    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [
        *app_kwargs.get("middleware", []),
        Middleware(_LogTooLargeUploads, limit_bytes=service.limits.max_upload_bytes),
    ]
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            max_file_size=service.limits.max_upload_bytes,
            show_error=True,
            theme=theme,
            app_kwargs=app_kwargs,
            **kwargs,
        )
    except OSError as error:  # Gradio's "Cannot find empty port", which names its own `server_port`
        if "port" not in str(error).lower():
            raise
        raise ITAUsageError(
            f"--port {port} is taken on {host}: another program (perhaps another ita-web) listens there; stop it, "
            "or choose another port with --port"
        ) from None
    return demo


def serve(
    model: str | Path = DEFAULT_MODEL,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    limits: WebLimits = WebLimits(),
) -> int:
    """Load `model` and serve the page until stopped (`ita-web`, `python app.py`); returns 0 once stopped.
    Raises `ITAUsageError` when Gradio is missing or the port is taken, `ITADataError` when the model cannot be
    loaded."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ITAUsageError("the web page needs Gradio: pip install -e '.[demo]'") from None
    service = SegmentationService(model, limits=limits, device=device)
    print(f"Serving {service.display_name} on http://{host}:{port} (Ctrl+C stops)", flush=True)
    launch(service, host=host, port=port)
    return 0
