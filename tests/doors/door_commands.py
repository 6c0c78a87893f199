"""What the door tests share: running a real command in a subprocess, and the hashes of the user's files before
and after it (a refused or failed run must leave every one of them as it was).

A door test runs the console command the user types (`ita-segment`, `ita-evaluate`, `ita-convert`, `ita-export`,
`ita-train`, `ita-web`, or `python app.py`), and asserts its exit status, its message, that no traceback was
printed for a user error, and that no file changed.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def command_line(command: str, *arguments: object) -> list[str]:
    """The argv that runs `command` (a console script of this package, or `app.py` / a script path)."""
    if command.endswith(".py"):
        return [sys.executable, str(ROOT / command), *map(str, arguments)]
    script = BIN / command
    if script.exists():
        return [str(script), *map(str, arguments)]
    # An environment without the console scripts (an editable install always has them): the same function.
    name = command.removeprefix("ita-")
    return [sys.executable, "-c", f"import sys, ita_cli; sys.exit(ita_cli.{name}())", *map(str, arguments)]


def run_command(
    command: str, *arguments: object, timeout: float = 600, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a real command; returns its completed process (text output)."""
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    environment.update(env or {})
    return subprocess.run(
        command_line(command, *arguments),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=cwd or ROOT,
    )


def file_hashes(*folders: Path) -> dict[Path, str]:
    """sha256 of every file under `folders` (recursively), by path."""
    hashes: dict[Path, str] = {}
    for folder in folders:
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for path in paths:
            hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def assert_refused(completed: subprocess.CompletedProcess[str], status: int, *phrases: str) -> None:
    """`completed` ended with exit status `status`, said each of `phrases` (case-insensitive) on its standard
    error, and printed no traceback."""
    message = completed.stderr
    assert completed.returncode == status, (completed.returncode, message[-3000:])
    assert "Traceback" not in message, message[-3000:]
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message[-3000:])
