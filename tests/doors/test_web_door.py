"""The web page's door, end to end: the real command (`python app.py`, `ita-web`) in a subprocess.

- Launch refusals (a missing model folder, a taken `--port`): exit status 2, the message naming the argument and
  the way out, no traceback, answered before torch is imported, no file changed.
- The running server, through Gradio's HTTP API (`gradio_client`, plus a raw upload over the size limit): every
  refused request gets its message, logs exactly one line on the server's standard error (no traceback), and the
  server goes on serving; the threshold changes what panoptic keeps, and an empty result is explained.
- The page in headless Chromium (Debian's `chromium`; skipped when it is not installed), driven through the
  DevTools protocol over a pipe (`--remote-debugging-pipe`: no extra Python package): the header names the
  model, the upload is previewed, a panoptic result with no segment is explained with the threshold's slider,
  long synonym lists leave the share and score columns in view, and refusals show their message. Screenshots go
  to `$ITA_WEB_SHOTS` (a temporary folder when unset).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from doors.door_commands import ROOT, assert_refused, command_line, file_hashes, run_command
from PIL import Image

pytest.importorskip("gradio", reason="the web page needs the `demo` extra (Gradio)")

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
)
REFUSED = "ita-web: refused a request: "
UPLOAD_LIMIT_MB = 0.05  # the server's --max-upload-mb: a 60 kB file is over it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def save_noise(path: Path, height: int = 40, width: int = 56) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def shots_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ITA_WEB_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------------------ the launch


def test_launch_refusals_answer_before_torch(tiny_model_dir, tmp_path):
    before = file_hashes(tiny_model_dir)
    start = time.monotonic()
    missing = run_command("app.py", "--model", "./missing")
    assert_refused(missing, 2, "app.py: error:", "model folder ./missing does not exist", "Hub id")
    assert "Repo id must be" not in missing.stderr
    assert time.monotonic() - start < 10  # no torch import (that alone takes ~5-10 s here)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        for command in ("app.py", "ita-web"):
            busy = run_command(command, "--model", tiny_model_dir, "--port", port)
            assert_refused(busy, 2, f"--port {port} is taken on 127.0.0.1", "choose another port with --port")
            assert "server_port" not in busy.stderr and "Running on" not in busy.stdout
        assert time.monotonic() - start < 20
    assert file_hashes(tiny_model_dir) == before


# ------------------------------------------------------------------------------------------------ the server


class Server:
    """`python app.py --model <tiny model> --port <free port>` running in a subprocess, its stderr in a file."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = folder / "server-stderr.txt"
        self._log = self.log.open("w")
        arguments = ("--model", model, "--port", self.port, "--max-upload-mb", UPLOAD_LIMIT_MB, "--device", "cpu")
        environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        self.process = subprocess.Popen(
            command_line("app.py", *arguments),
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def wait_until_serving(self, timeout: float = 180) -> None:
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                pytest.fail(f"the server stopped ({self.process.returncode}): {self.stderr()[-3000:]}")
            try:
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"the server did not answer in {timeout} s: {self.stderr()[-3000:]}")

    def stderr(self) -> str:
        return self.log.read_text()

    def refusals(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.startswith(REFUSED)]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    running = Server(Path(tiny_model_dir), tmp_path_factory.mktemp("web-door"))
    try:
        running.wait_until_serving()
        yield running
    finally:
        running.stop()


def test_refused_requests_are_shown_and_logged_once_each(server, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, analytics_enabled=False)
    photo = handle_file(str(save_noise(tmp_path / "photo.png")))
    (tmp_path / "notes.png").write_text("not an image")
    not_an_image = handle_file(str(tmp_path / "notes.png"))
    Image.new("1", (6000, 5000)).save(tmp_path / "huge.png")  # 30 megapixels in a few kB
    huge = handle_file(str(tmp_path / "huge.png"))
    before = len(server.refusals())
    cases = [
        ((photo, "", "semantic", 0.8), "/segment", "Type at least one class"),
        ((photo, " \n \n", "panoptic", 0.8), "/segment", "Type at least one class"),
        ((not_an_image, "cat", "semantic", 0.8), "/segment", "not an image PIL can read"),
        ((huge, "cat", "semantic", 0.8), "/segment", "30.0 megapixels: at most 25 megapixels"),
        ((photo, "cat\n" + "x" * 301, "semantic", 0.8), "/segment", "Class line 2 has 301 characters"),
        ((photo, "cat\ncat", "semantic", 0.8), "/segment", "Invalid classes: Duplicate class name"),
        ((photo, "cat", "panoptic", 2), "/segment", "greater than maximum value 1"),
        ((photo, "cat", "depth", 0.8), "/segment", "not in the list of choices"),
        ((not_an_image,), "/preview", "not an image PIL can read"),
    ]
    for inputs, endpoint, phrase in cases:
        with pytest.raises(Exception, match=phrase):
            client.predict(*inputs, api_name=endpoint)
    # An upload over --max-upload-mb, refused by Gradio's own upload route before the page's code runs.
    big = save_noise(tmp_path / "big.png", 150, 150)  # about 67 kB of noise
    with big.open("rb") as file:
        response = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", file, "image/png")})
    assert response.status_code == 413 and "File size exceeded" in response.text

    time.sleep(0.5)
    logged = server.refusals()[before:]
    assert len(logged) == len(cases) + 1, logged
    for (_, _, phrase), line in zip(cases, logged):
        assert phrase in line, (phrase, line)
    assert f"at most {UPLOAD_LIMIT_MB:g} MB per image" in logged[-1]
    assert "Traceback" not in server.stderr()

    # Still serving: the same page answers, and the threshold decides what panoptic keeps.
    _, table, files, note = client.predict(photo, "cat\ndog", "panoptic", 0.8, api_name="/segment")
    assert not table["value"]["data"]
    assert note.startswith("No segment reached the score threshold 0.80: lower the threshold (the slider)")
    _, table, files, note = client.predict(photo, "cat\ndog", "panoptic", 0.0, api_name="/segment")
    assert table["value"]["data"] and "reached the score threshold 0.00" in note
    assert [Path(name).name.split("-")[:-1] for name in files] == [["panoptic"], ["panoptic", "overlay"]]
    _, table, _, note = client.predict(photo, "cat\ndog", "semantic", 0.0, api_name="/segment")
    assert table["headers"] == ["class", "pixel share (%)", "score"] and note.endswith("classes present.")
    assert "Traceback" not in server.stderr()


# ------------------------------------------------------------------------------------------------ the browser


class Chromium:
    """Headless Chromium driven through the DevTools protocol over a pipe: Chromium reads the commands from file
    descriptor 3 and writes its answers to 4, each a JSON message ended by a NUL byte."""

    def __init__(self, executable: str, width: int = 1280, height: int = 1400) -> None:
        to_chromium, self._commands = os.pipe()
        self._answers, from_chromium = os.pipe()

        def wire() -> None:  # in the child, before exec
            os.dup2(to_chromium, 3)
            os.dup2(from_chromium, 4)

        self.profile = tempfile.mkdtemp(prefix="ita-chromium-")
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # tests may run as root (containers)
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            preexec_fn=wire,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._id = 0
        self._session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        message: dict = {"id": self._id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"not true in {timeout} s: {expression}")

    def upload(self, path: Path) -> None:
        root = self.call("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector="input[type=file]")["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def click(self, text: str, selector: str = "button") -> None:
        self.evaluate(
            f"[...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => (e.value || e.innerText).trim() === {json.dumps(text)}).click()"
        )

    def type_into_textarea(self, text: str) -> None:
        self.evaluate(
            "(() => { const box = document.querySelector('textarea'); box.value = "
            f"{json.dumps(text)}; box.dispatchEvent(new Event('input', {{bubbles: true}})); }})()"
        )

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._commands)
        os.close(self._answers)
        shutil.rmtree(self.profile, ignore_errors=True)


NOTE = "document.querySelector('#note').innerText"


@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test: Debian's chromium is not installed")
def test_page_in_headless_chromium(server, tmp_path):
    assert CHROMIUM is not None
    shots = shots_folder(tmp_path)
    photo = save_noise(tmp_path / "photo.png", 64, 96)  # about 18 kB: under --max-upload-mb
    (tmp_path / "notes.png").write_text("not an image")
    browser = Chromium(CHROMIUM)
    try:
        browser.call("Page.navigate", url=server.url)
        browser.wait_for("[...document.querySelectorAll('button')].some(e => e.innerText.trim() === 'Segment')", 90)
        header = str(browser.evaluate("document.querySelector('#header').innerText"))
        assert f"Model: {server.model}" in header and "Model: model" not in header
        browser.screenshot(shots / "1-loaded.png")

        # The upload is previewed; panoptic shows its threshold; an empty result says why.
        browser.upload(photo)
        browser.wait_for("!!document.querySelector('#preview img')", 30)
        assert not browser.evaluate("!!document.querySelector('input[type=range]')")  # semantic: no threshold
        browser.click("panoptic", "input[type=radio]")
        browser.wait_for("!!document.querySelector('input[type=range]')")
        assert browser.evaluate("document.querySelector('input[type=range]').value") == "0.8"
        browser.click("Segment")
        note = browser.wait_for(f"{NOTE}.includes('threshold') && {NOTE}", 60)
        assert "No segment reached the score threshold 0.80: lower the threshold" in str(note)
        browser.wait_for("!!document.querySelector('#overlay img')", 30)
        # No toolbar over the overlay: its icons would hide the legend's first entry.
        over_picture = browser.evaluate(
            "(() => { const img = document.querySelector('#overlay img'); const picture = img.getBoundingClientRect(); "
            "return [...document.querySelectorAll('#overlay button')].filter(button => { if (button.contains(img)) "
            "return false; "
            "const box = button.getBoundingClientRect(); return box.width > 0 && box.left < picture.right && "
            "box.right > picture.left && box.top < picture.bottom && box.bottom > picture.top; })"
            ".map(button => button.outerHTML.slice(0, 200)); })()"
        )
        assert over_picture == [], over_picture
        browser.screenshot(shots / "2-panoptic-empty.png")

        # Long synonym lists: shortened and wrapped in their column; the share and score columns stay in view.
        synonyms = ", ".join(f"cat{number} variant" for number in range(40))
        browser.click("semantic", "input[type=radio]")
        browser.type_into_textarea(f"cat, {synonyms}"[:290] + "\n" + f"dog, {synonyms}".replace("cat", "dog")[:290])
        browser.click("Segment")
        browser.wait_for(f"{NOTE}.includes('classes present')", 60)
        browser.wait_for("document.querySelectorAll('#table th').length === 3")
        browser.wait_for("!!document.querySelector('#overlay img')", 30)
        columns = browser.evaluate(
            "(() => { const table = document.querySelector('#table table'); const box = document.querySelector('#table')"
            ".getBoundingClientRect(); return {right: box.right, page: document.documentElement.clientWidth, "
            "headers: [...table.querySelectorAll('th')].map(e => [e.innerText.trim(), e.getBoundingClientRect()"
            ".right]), cells: document.querySelector('#table').innerText}; })()"
        )
        assert isinstance(columns, dict)
        assert [name for name, _ in columns["headers"]] == ["class", "pixel share (%)", "score"]
        assert all(right <= min(columns["right"], columns["page"]) + 1 for _, right in columns["headers"]), columns
        assert "variant (+16 more)" in columns["cells"], columns
        browser.screenshot(shots / "3-semantic-long-synonyms.png")

        # Refusals: the message on the page, one line each on the server's console.
        before = len(server.refusals())
        browser.type_into_textarea("")
        browser.click("Segment")
        browser.wait_for("document.body.innerText.includes('Type at least one class')", 30)
        browser.screenshot(shots / "4-refused-empty-vocabulary.png")
        browser.call("Page.navigate", url=server.url)  # a fresh page: its file input is empty again
        browser.wait_for("[...document.querySelectorAll('button')].some(e => e.innerText.trim() === 'Segment')", 90)
        browser.upload(tmp_path / "notes.png")
        browser.wait_for("document.body.innerText.includes('not an image PIL can read')", 30)
        browser.screenshot(shots / "5-refused-not-an-image.png")
        time.sleep(0.5)
        logged = server.refusals()[before:]
        assert len(logged) == 2 and "Type at least one class" in logged[0] and "not an image" in logged[1], logged
        assert "Traceback" not in server.stderr()
    except Exception:
        browser.screenshot(shots / "failed.png")
        raise
    finally:
        browser.close()
