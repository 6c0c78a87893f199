"""The web demo page (`ita_segmentation/apps/web.py`): its limits and its work without a browser, then the page
itself on 127.0.0.1 through `gradio_client` (where Gradio is installed: the `demo` extra)."""

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ita_segmentation.apps.web import (
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


# ----------------------------------------------------------------------------------------------------------
# The service (the page's work, without Gradio)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_service_tasks(service, tmp_path, task):
    image = save_image(tmp_path / "photo.jpg")
    picture, rows, header, label_path = service.segment(image, CLASSES, task)
    assert picture.height == 40 and picture.width >= 56 and picture.mode == "RGB"  # a legend beside, if any
    with Image.open(label_path) as label_map:
        assert label_map.size == (56, 40)
        expected_mode = {"semantic": "L", "panoptic": "RGB", "instance": "I;16"}[task]
        assert label_map.mode == expected_mode
    assert len(header) == len(rows[0]) if rows else True
    if task == "semantic":
        assert rows and sum(row[1] for row in rows) == pytest.approx(100, abs=0.1)
    # Each request writes its own file: an earlier visitor's download is never overwritten.
    assert service.segment(image, CLASSES, task)[3] != label_path


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
    assert list(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == ["/segment"]
    image = save_image(tmp_path / "photo.png")
    picture, table, label_path = client.predict(handle_file(str(image)), CLASSES, "panoptic", api_name="/segment")
    with Image.open(picture) as overlay_image:
        assert overlay_image.size == (56, 40)
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
        client.predict(handle_file(str(huge)), CLASSES, "semantic", api_name="/segment")
    with pytest.raises(Exception, match="at most 300"):
        client.predict(handle_file(str(save_image(tmp_path / "a.png"))), "x" * 301, "semantic", api_name="/segment")


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
            client.predict(handle_file(str(image)), CLASSES, "semantic", api_name="/segment")
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
        jobs = [client.submit(image, CLASSES, "semantic", api_name="/segment") for _ in range(4)]
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
