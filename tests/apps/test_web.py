"""The web demo page (`ita_segmentation/apps/web.py`): its limits and its work without a browser, then the page
itself on 127.0.0.1 through `gradio_client` (where Gradio is installed: the `demo` extra)."""

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ita_segmentation.apps.web import (
    DEFAULT_THRESHOLDS,
    STUFF_MARKER,
    SegmentationService,
    WebInputError,
    WebLimits,
    benchmark_class_lists,
    check_upload,
    parse_classes,
)

CLASSES = "cat\nsofa , couch\nwall [stuff]"


@pytest.fixture(scope="module")
def service(tiny_model_dir, tmp_path_factory):
    return SegmentationService(tiny_model_dir, device="cpu", output_dir=tmp_path_factory.mktemp("web-out"))


def save_image(path, height=40, width=56, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------------------------------------------


def test_classes_with_stuff_marker_and_limits():
    limits = WebLimits(max_classes=3, max_class_length=20)
    assert parse_classes(CLASSES, limits) == (["cat", "sofa,couch", "wall"], ["wall"])
    with pytest.raises(WebInputError, match="at least one class"):
        parse_classes(" \n\n", limits)
    with pytest.raises(WebInputError, match="4 classes: at most 3 per request"):
        parse_classes("a\nb\nc\nd", limits)
    with pytest.raises(WebInputError, match="Class line 2 has 21 characters: at most 20"):
        parse_classes("a\n" + "x" * 21, limits)
    with pytest.raises(WebInputError, match="Invalid classes: .*"):
        parse_classes("cat\ncat", limits)


def test_upload_byte_limit(tmp_path):
    path = save_image(tmp_path / "image.png")
    size = path.stat().st_size
    assert check_upload(path, WebLimits(max_upload_bytes=size)).size == (56, 40)
    with pytest.raises(WebInputError, match="MB: at most"):
        check_upload(path, WebLimits(max_upload_bytes=size - 1))


def test_a_100_megapixel_png_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 megapixels in a file of a few kB
    assert path.stat().st_size < 1024**2
    with pytest.warns(Image.DecompressionBombWarning):  # PIL itself only warns at this size
        with pytest.raises(WebInputError, match=r"10000 x 10000 = 100.0 megapixels: at most 25 megapixels"):
            check_upload(path, WebLimits())


def test_a_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (15_000, 15_000)).save(path)  # 225 megapixels: beyond PIL's own bomb limit
    with pytest.raises(WebInputError, match="too large to open safely"):
        check_upload(path, WebLimits(max_pixels=10**12))


def test_files_that_are_not_images_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(WebInputError, match="not an image PIL can read"):
        check_upload(tmp_path / "notes.png", WebLimits())
    with pytest.raises(WebInputError, match="Upload an image first"):
        check_upload(None, WebLimits())


def test_web_input_errors_are_usage_errors_logged_in_one_line():
    import io

    from ita_segmentation.apps.web import log_refusal
    from ita_segmentation.errors import ITAUsageError

    assert issubclass(WebInputError, ITAUsageError) and issubclass(WebInputError, ValueError)
    stream = io.StringIO()
    assert log_refusal(WebInputError("two\nlines  here"), stream) == "two lines here"
    assert stream.getvalue() == "ita-web: refused a request: two lines here\n"


def test_threshold_is_checked_and_semantic_ignores_it():
    from ita_segmentation.apps.web import check_threshold

    assert check_threshold("anything", "semantic") is None
    assert check_threshold(None, "panoptic") == DEFAULT_THRESHOLDS["panoptic"] == 0.8
    assert check_threshold(None, "instance") == DEFAULT_THRESHOLDS["instance"] == 0.5
    assert check_threshold(0, "instance") == 0.0 and check_threshold("0.25", "panoptic") == 0.25
    for bad in (1.5, -0.1, float("nan"), "high", [0.5]):
        with pytest.raises(WebInputError, match="threshold must be a number from 0 to 1"):
            check_threshold(bad, "panoptic")
    # The panoptic default is the processor's own.
    import inspect

    from image_processing_ita import ITAImageProcessor

    signature = inspect.signature(ITAImageProcessor.post_process_panoptic_segmentation)
    assert signature.parameters["threshold"].default == DEFAULT_THRESHOLDS["panoptic"]


def test_table_names_are_shortened_by_whole_synonyms():
    from ita_segmentation.apps.web import table_name

    assert table_name("sofa,couch") == "sofa, couch"
    long_list = ",".join(f"synonym{number}" for number in range(30))
    shown = table_name(long_list, length=40)
    assert shown.startswith("synonym0, synonym1, ") and shown.endswith("more)") and len(shown) <= 40 + 12
    kept = shown.split(" (+")[0].split(", ")
    assert shown.endswith(f"(+{30 - len(kept)} more)")
    assert table_name("x" * 100, length=10) == "x" * 9 + "…"


def test_model_display_name(tmp_path, monkeypatch):
    from ita_segmentation.apps.web import megabytes, model_display_name

    monkeypatch.chdir(tmp_path)
    assert model_display_name(tmp_path / "demo_output" / "model") == "demo_output/model"
    assert model_display_name("owner/name") == "owner/name"
    assert model_display_name("/elsewhere/model") == "/elsewhere/model"
    assert (megabytes(20 * 1024**2), megabytes(1024**2 // 2)) == ("20", "0.5")


def test_listen_address_checks(monkeypatch):
    from ita_segmentation.apps.web_cli import check_listen_address, check_web_model
    from ita_segmentation.apps.web_settings import DEFAULT_MODEL
    from ita_segmentation.errors import ITAUsageError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ITAUsageError, match=rf"--port {port} is taken on 127.0.0.1: .*--port"):
            check_listen_address("127.0.0.1", port)
    with pytest.raises(ITAUsageError, match="--port 70000: a port is a number from 1 to 65535"):
        check_listen_address("127.0.0.1", 70000)
    with pytest.raises(ITAUsageError, match="--host no.such.host.invalid: not a known address"):
        check_listen_address("no.such.host.invalid", free_port())
    check_listen_address("127.0.0.1", free_port())
    if not DEFAULT_MODEL.exists():
        with pytest.raises(ITAUsageError, match="make demo"):
            check_web_model(str(DEFAULT_MODEL))
    with pytest.raises(ITAUsageError, match="./missing does not exist"):
        check_web_model("./missing")


# ----------------------------------------------------------------------------------------------------------
# The service (the page's work, without Gradio)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_service_tasks(service, tmp_path, task):
    image = save_image(tmp_path / "photo.jpg")
    picture, rows, header, widths, label_path, overlay_path, note = service.segment(image, CLASSES, task)
    assert picture.height == 40 and picture.width >= 56 and picture.mode == "RGB"  # a legend beside, if any
    with Image.open(label_path) as label_map:
        assert label_map.size == (56, 40)
        expected_mode = {"semantic": "L", "panoptic": "RGB", "instance": "I;16"}[task]
        assert label_map.mode == expected_mode
    assert len(header) == len(rows[0]) if rows else True
    assert len(widths) == len(header)
    with Image.open(overlay_path) as saved:
        assert saved.size == picture.size
    if task == "semantic":
        assert rows and sum(row[1] for row in rows) == pytest.approx(100, abs=0.1)
        assert note.endswith("of 3 classes present.")
    else:
        assert f"the score threshold {DEFAULT_THRESHOLDS[task]:.2f}" in note
    # Each request writes its own files: an earlier visitor's download is never overwritten.
    again = service.segment(image, CLASSES, task)
    assert again.label_path != label_path and again.overlay_path != overlay_path


def test_service_preview_and_threshold(service, tmp_path):
    image = save_image(tmp_path / "photo.png", 600, 900)
    assert service.preview(image).size == (512, 341) and service.preview(None) is None
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(WebInputError, match="not an image"):
        service.preview(tmp_path / "notes.png")
    small = save_image(tmp_path / "small.png")
    none = service.segment(small, CLASSES, "panoptic", threshold=1.0)
    assert none.rows == [] and none.note.startswith("No segment reached the score threshold 1.00: lower the")
    every = service.segment(small, CLASSES, "instance", threshold=0.0)
    assert every.rows and every.note.endswith("reached the score threshold 0.00.")
    with pytest.raises(WebInputError, match="threshold"):
        service.segment(small, CLASSES, "instance", threshold=3)


def test_service_refuses_bad_requests(service, tmp_path):
    image = save_image(tmp_path / "photo.png")
    with pytest.raises(WebInputError, match="Choose one of semantic, panoptic, instance"):
        service.segment(image, CLASSES, "depth")
    with pytest.raises(WebInputError, match="at least one class"):
        service.segment(image, "", "semantic")


def test_benchmark_class_lists():
    lists = benchmark_class_lists()
    coco = lists["COCO panoptic (133)"].splitlines()
    assert len(coco) == 133 and sum(line.endswith(STUFF_MARKER) for line in coco) == 53
    classes, stuff = parse_classes(lists["COCO panoptic (133)"], WebLimits())
    assert len(classes) == 133 and len(stuff) == 53 and classes[0].startswith("person")
    assert len(lists["A-150 (150)"].splitlines()) == 150
    assert all(len(text.splitlines()) <= WebLimits().max_classes for text in lists.values())
    # The benchmarks' lists, read from their files, are the registry's (which the page no longer imports).
    from ita_segmentation.evaluation.benchmarks import BENCHMARKS

    for benchmark in BENCHMARKS.values():
        assert lists[f"{benchmark.display_name} ({benchmark.num_labels})"] == "\n".join(benchmark.class_names)
    assert list(lists)[1:] == [f"{b.display_name} ({b.num_labels})" for b in BENCHMARKS.values()]


# ----------------------------------------------------------------------------------------------------------
# The page on 127.0.0.1, through gradio_client
# ----------------------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page(service):
    pytest.importorskip("gradio", reason="the web page needs the `demo` extra (Gradio)")
    from ita_segmentation.apps.web import launch

    port = free_port()
    demo = launch(service, port=port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_page_segments_through_gradio_client(page, tmp_path):
    from gradio_client import Client, handle_file

    demo, url = page
    assert demo.server_name == "127.0.0.1"  # the default: this machine only
    client = Client(url, verbose=False, analytics_enabled=False)
    assert sorted(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == [
        "/preview",
        "/segment",
    ]
    image = save_image(tmp_path / "photo.png")
    picture, table, files, note = client.predict(handle_file(str(image)), CLASSES, "panoptic", 0.8, api_name="/segment")
    label_path, overlay_path = files
    with Image.open(picture) as overlay_image, Image.open(overlay_path) as saved:
        assert overlay_image.size[1] == 40 and saved.size == overlay_image.size
    with Image.open(label_path) as label_map:
        assert label_map.mode == "RGB" and label_map.size == (56, 40)
    assert table["headers"] == ["segment", "class", "score", "pixel share (%)", "stuff"]


def test_page_reports_limits(page, tmp_path):
    from gradio_client import Client, handle_file

    _, url = page
    client = Client(url, verbose=False, analytics_enabled=False)
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)
    with pytest.raises(Exception, match="megapixels"):
        client.predict(handle_file(str(huge)), CLASSES, "semantic", 0.8, api_name="/segment")
    with pytest.raises(Exception, match="at most 300"):
        client.predict(
            handle_file(str(save_image(tmp_path / "a.png"))), "x" * 301, "semantic", 0.8, api_name="/segment"
        )


def test_upload_byte_limit_is_enforced_by_the_server(service, tmp_path):
    pytest.importorskip("gradio", reason="the web page needs the `demo` extra (Gradio)")
    from gradio_client import Client, handle_file

    from ita_segmentation.apps.web import launch

    small = SegmentationService(
        service.model_name,
        limits=WebLimits(max_upload_bytes=2000),
        segmenter=service.segmenter,
        output_dir=tmp_path / "out",
    )
    port = free_port()
    demo = launch(small, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        image = save_image(tmp_path / "big.png", 80, 80)  # about 19 kB of noise
        with pytest.raises(Exception, match="(?i)file.*(large|size|exceed)"):
            client.predict(handle_file(str(image)), CLASSES, "semantic", 0.8, api_name="/segment")
    finally:
        demo.close()


def test_queue_runs_one_at_a_time_and_turns_away_the_excess(service, tmp_path):
    pytest.importorskip("gradio", reason="the web page needs the `demo` extra (Gradio)")
    from gradio_client import Client, handle_file

    from ita_segmentation.apps.web import launch

    running, most = [0], [0]
    lock = threading.Lock()

    def slow_segmenter(image, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(1.5)
        with lock:
            running[0] -= 1
        return service.segmenter(image, **kwargs)

    slow = SegmentationService(
        service.model_name, limits=WebLimits(queue_size=1), segmenter=slow_segmenter, output_dir=tmp_path / "out"
    )
    port = free_port()
    demo = launch(slow, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        image = handle_file(str(save_image(tmp_path / "photo.png")))
        jobs = [client.submit(image, CLASSES, "semantic", 0.8, api_name="/segment") for _ in range(4)]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=60)
                outcomes.append("done")
            except Exception as error:  # noqa: BLE001 - gradio_client's error types vary by version
                outcomes.append(str(error))
        # Four requests at once against one running and one waiting place: some are served, the excess is told
        # the queue is full (how many are served depends on how soon the first starts).
        assert outcomes.count("done") >= 1
        assert any("queue is full" in outcome.lower() for outcome in outcomes), outcomes
        assert most[0] == 1  # never two segmentations at once
    finally:
        demo.close()
