"""`make demo` (`scripts/demo.py`) replaces an earlier demo's results, never a folder of the user's."""

import importlib.util
import json

from doors.door_commands import ROOT, file_hashes


def load_demo():
    spec = importlib.util.spec_from_file_location("ita_demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    demo = load_demo()
    mine = tmp_path / "mine"
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "holiday.png").write_bytes(b"my photo")
    (mine / "notes.txt").write_text("keep me")
    before = file_hashes(mine)
    assert demo.main(["--output", str(mine), "--steps", "1"]) == 2
    error = capsys.readouterr().err
    assert "is not empty and is not an earlier demo's folder" in error and str(mine) in error
    assert file_hashes(mine) == before

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert demo.main(["--output", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_earlier_demo_folder_is_recognised(tmp_path):
    demo = load_demo()
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / demo.DEMO_MARKER).write_text("")
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({"notice": demo.NOTICE}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.json").write_text('{"notice": "someone else"}')
    assert demo._is_demo_folder(interrupted) and demo._is_demo_folder(finished)
    assert not demo._is_demo_folder(foreign)
