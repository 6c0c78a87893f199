"""Run the core tests against the lowest versions that setup.cfg declares (`make test-lowest`).

The lowest versions are pinned in `constraints-lowest.txt`. Installing torch again would cost gigabytes, so
the script does not build a second virtual environment: it installs, with `pip install --no-deps --target`,
only the pinned packages whose version differs from the running environment's into an overlay folder
(`build/lowest-overlay` by default), and runs the tests with that folder first on `PYTHONPATH`, where it shadows
the environment's own versions. Before the tests it checks, in the overlay's environment:

- that every pinned package resolves to its pinned version (the overlay wins);
- that every requirement declared by an installed distribution, on one of the overlaid packages or by one of
  them, holds (`pip check` in spirit: pip cannot check a `PYTHONPATH` overlay).

Usage: `python tools/test_lowest.py [--constraints FILE] [--overlay DIR] [pytest arguments...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE_TESTS = (
    "tests/test_parity.py",
    "tests/test_modeling.py",
    "tests/test_processing.py",
    "tests/test_image_processing.py",
    "tests/apps/test_pipeline.py",
    "tests/hub/test_convert_checkpoint.py",
    "tests/training/test_training.py",
)

# Runs inside the overlay's environment: prints one line per problem, exits 1 if there is any.
CHECK_SCRIPT = r"""
import importlib.metadata as md
import sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# argv: the overlaid names, comma-separated, then one name==version per pin
overlaid = {canonicalize_name(name) for name in sys.argv[1].split(",") if name}
pins = dict(arg.split("==") for arg in sys.argv[2:])
pins = {canonicalize_name(name): version for name, version in pins.items()}
problems = []
installed = {}
for dist in md.distributions():
    name = canonicalize_name(dist.metadata["Name"])
    installed.setdefault(name, dist)  # the first on sys.path wins, as for imports
for name, version in pins.items():
    dist = installed.get(name)
    found = dist.version if dist is not None else "missing"
    if found != version:
        problems.append(f"{name}: pinned {version}, resolved {found}")
for name, dist in installed.items():
    for line in dist.requires or ():
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        target = canonicalize_name(requirement.name)
        if name not in overlaid and target not in overlaid:
            continue
        have = installed.get(target)
        if have is None:
            problems.append(f"{name} {dist.version} requires {line}: not installed")
        elif not requirement.specifier.contains(have.version, prereleases=True):
            problems.append(f"{name} {dist.version} requires {line}: found {have.version}")
print("\n".join(problems) if problems else "versions: every pin resolved, every requirement met")
sys.exit(1 if problems else 0)
"""


def read_pins(path: Path) -> dict[str, str]:
    """Return {name: version} from a file of `name==version` lines (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise SystemExit(f"{path}: every line must pin one version (name==version): {raw!r}")
        pins[name.strip()] = version.strip()
    return pins


def installed_version(name: str, env: dict[str, str]) -> str | None:
    """The version of `name` that `sys.executable` resolves under `env`, or None when it is not installed."""
    code = (
        "import importlib.metadata as m, sys\ntry: print(m.version(sys.argv[1]))\nexcept m.PackageNotFoundError: pass"
    )
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip() or None


def build_overlay(pins: dict[str, str], overlay: Path) -> list[str]:
    """Install into `overlay` the pins that the base environment lacks; return their names.

    The overlay is rebuilt only when the set of packages to install changes (a stamp file records it).
    """
    base_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    needed = sorted(name for name, version in pins.items() if installed_version(name, base_env) != version)
    wanted = "\n".join(f"{name}=={pins[name]}" for name in needed)
    stamp = overlay / ".stamp"
    digest = hashlib.sha256(wanted.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        print(f"overlay {overlay} is up to date ({len(needed)} packages)")
        return needed
    shutil.rmtree(overlay, ignore_errors=True)
    overlay.mkdir(parents=True)
    if needed:
        print(f"installing into {overlay}: {' '.join(f'{name}=={pins[name]}' for name in needed)}")
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(overlay)]
        subprocess.run(command + [f"{name}=={pins[name]}" for name in needed], check=True)
    stamp.write_text(digest)
    return needed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints-lowest.txt")
    parser.add_argument("--overlay", type=Path, default=ROOT / "build" / "lowest-overlay")
    args, pytest_args = parser.parse_known_args()
    start = time.monotonic()
    pins = read_pins(args.constraints)
    overlaid = build_overlay(pins, args.overlay)
    env = dict(os.environ, PYTHONPATH=str(args.overlay.resolve()))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    pin_args = [f"{name}=={version}" for name, version in pins.items()]
    check = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, ",".join(overlaid), *pin_args], env=env, cwd=ROOT)
    if check.returncode != 0:
        return check.returncode
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS, *pytest_args]
    result = subprocess.run(pytest, env=env, cwd=ROOT)
    print(f"test-lowest: {'passed' if result.returncode == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
