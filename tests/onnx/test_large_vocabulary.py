"""Vocabularies large enough for the disk cache (1,024 prompts and up) on both backends, from Python and from the
command line; the exported text tower's fingerprint; vocabularies stored in an exported folder."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ONNX_STORED_VOCABULARY
from doors.door_commands import run_command
from PIL import Image

from ita_segmentation.onnx import ITAOnnxModel
from ita_segmentation.synthetic import draw_synthetic_scene
from modeling_ita import ITAForOpenVocabSegmentation
from modeling_ita.vocabulary import STORED_VOCABULARIES_DIR

# 520 synonyms x the tiny config's 2 templates = 1,040 prompts: kept by the disk cache (1,024 and up).
LARGE = [f"object number {i}" for i in range(520)]


def count_text_forwards(monkeypatch, text_tower):
    calls = []
    original = text_tower.encode_text
    monkeypatch.setattr(text_tower, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def backends(ita_onnx_export):
    """(name, loader, the model's text tower) of each backend, with its folder."""
    source, exported = ita_onnx_export
    return [
        ("onnxruntime", exported, ITAOnnxModel.from_pretrained, lambda model: model.text_encoder),
        ("pytorch", source, ITAForOpenVocabSegmentation.from_pretrained, lambda model: model.backbone),
    ]


def test_both_backends_keep_a_large_vocabulary_in_the_disk_cache(ita_onnx_export, tmp_path, monkeypatch):
    encoded = {}
    for name, folder, load, text_tower in backends(ita_onnx_export):
        cache = tmp_path / f"cache-{name}"
        monkeypatch.setenv("ITA_VOCABULARY_CACHE", str(cache))
        before = set(cache.glob("*.safetensors"))
        model = load(folder)
        calls = count_text_forwards(monkeypatch, text_tower(model))
        first = model.encode_vocabulary(LARGE)  # the crash of issue 25 for onnxruntime
        assert len(calls) > 0, name
        written = set(cache.glob("*.safetensors")) - before
        assert len(written) == 1, name
        # A second model (a new process: an empty memory cache) reads the file and runs no text forward.
        model = load(folder)
        calls = count_text_forwards(monkeypatch, text_tower(model))
        second = model.encode_vocabulary(LARGE)
        assert calls == [], name
        assert torch.equal(second.text_classifier, first.text_classifier)
        assert torch.equal(second.name_embeddings, first.name_embeddings)
        encoded[name] = first
    # The two text towers give the same vocabulary, float rounding apart.
    torch.testing.assert_close(
        encoded["onnxruntime"].text_classifier, encoded["pytorch"].text_classifier, atol=1e-5, rtol=1e-4
    )
    # The export's manifest records the PyTorch tower's fingerprint: one cache serves both backends.
    monkeypatch.setenv("ITA_VOCABULARY_CACHE", str(tmp_path / "cache-onnxruntime"))
    source, _ = ita_onnx_export
    model = ITAForOpenVocabSegmentation.from_pretrained(source)
    calls = count_text_forwards(monkeypatch, model.backbone)
    model.encode_vocabulary(LARGE)
    assert calls == [] and len(list((tmp_path / "cache-onnxruntime").glob("*.safetensors"))) == 1
    assert list(cache.glob(".*.tmp")) == []


def test_the_exported_text_tower_fingerprint(ita_onnx_export, tmp_path, monkeypatch):
    source, exported = ita_onnx_export
    # ita-export records the PyTorch tower's fingerprint (after its check) and copies the stored vocabularies, so
    # both serve the export: the source folder's stored vocabulary is used without the exported text tower.
    pytorch = ITAForOpenVocabSegmentation.from_pretrained(source)
    recorded = pytorch.vocabulary_encoder.text_tower_fingerprint(pytorch.backbone)
    assert ITAOnnxModel.from_pretrained(exported).text_encoder.weights_fingerprint() == recorded
    assert sorted(p.name for p in (exported / STORED_VOCABULARIES_DIR).iterdir()) == sorted(
        p.name for p in (source / STORED_VOCABULARIES_DIR).iterdir()
    )
    monkeypatch.setenv("ITA_VOCABULARY_CACHE", "off")
    model = ITAOnnxModel.from_pretrained(exported)
    calls = count_text_forwards(monkeypatch, model.text_encoder)
    model.encode_vocabulary(ONNX_STORED_VOCABULARY)
    assert calls == []

    # A manifest that records no fingerprint: the exported file's hash, equal for equal weights (a copy of the
    # folder elsewhere names the same weights).
    shutil.copytree(exported, tmp_path / "copy")
    manifest = json.loads((tmp_path / "copy" / "onnx_export.json").read_text())
    del manifest["text_tower_fingerprint"]
    (tmp_path / "copy" / "onnx_export.json").write_text(json.dumps(manifest))
    fingerprint = ITAOnnxModel.from_pretrained(tmp_path / "copy").text_encoder.weights_fingerprint()
    assert fingerprint.startswith("onnx-sha256:")
    shutil.copytree(tmp_path / "copy", tmp_path / "copy2")
    assert ITAOnnxModel.from_pretrained(tmp_path / "copy2").text_encoder.weights_fingerprint() == fingerprint
    # Other weights: another fingerprint.
    text_file = tmp_path / "copy" / "text_encoder.onnx"
    model = ITAOnnxModel.from_pretrained(tmp_path / "copy")
    with open(text_file, "ab") as handle:
        handle.write(b"\0")  # trailing bytes change the file, not the graph onnxruntime already read
    model.text_encoder._fingerprint = None
    assert model.text_encoder.weights_fingerprint() != fingerprint


def test_an_exported_folder_finds_the_vocabularies_stored_in_it(ita_onnx_export, tmp_path, monkeypatch):
    source, exported = ita_onnx_export
    monkeypatch.setenv("ITA_VOCABULARY_CACHE", "off")
    folder = tmp_path / "exported"
    shutil.copytree(exported, folder)
    paths = ITAOnnxModel.from_pretrained(folder).store_vocabularies({"objects": LARGE[:40]})
    assert len(paths) == 1 and paths[0].startswith(str(folder / STORED_VOCABULARIES_DIR))
    model = ITAOnnxModel.from_pretrained(folder)
    calls = count_text_forwards(monkeypatch, model.text_encoder)
    model.encode_vocabulary(LARGE[:40])
    assert calls == []

    # An export whose manifest records the PyTorch text tower's fingerprint takes the PyTorch model's stored
    # vocabularies as its own (the export's check bounds their difference).
    pytorch = ITAForOpenVocabSegmentation.from_pretrained(source)
    recorded = pytorch.vocabulary_encoder.text_tower_fingerprint(pytorch.backbone)
    manifest = json.loads((folder / "onnx_export.json").read_text())
    (folder / "onnx_export.json").write_text(json.dumps({**manifest, "text_tower_fingerprint": recorded}))
    shutil.rmtree(folder / STORED_VOCABULARIES_DIR)
    pytorch.store_vocabularies(folder, [LARGE[:40]])
    model = ITAOnnxModel.from_pretrained(folder)
    assert model.text_encoder.weights_fingerprint() == recorded
    calls = count_text_forwards(monkeypatch, model.text_encoder)
    stored = model.encode_vocabulary(LARGE[:40])
    assert calls == []
    own = ITAOnnxModel.from_pretrained(exported).encode_vocabulary(LARGE[:40])
    torch.testing.assert_close(stored.text_classifier, own.text_classifier, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_ita_segment_keeps_a_large_vocabulary_in_the_disk_cache(backend, ita_onnx_export, tmp_path):
    source, exported = ita_onnx_export
    folder = exported if backend == "onnxruntime" else source
    rng = np.random.default_rng(0)
    Image.fromarray(draw_synthetic_scene(rng, 64, 80)[0]).save(tmp_path / "scene.png")
    (tmp_path / "classes.txt").write_text("\n".join(LARGE) + "\n")
    cache = tmp_path / "cache"
    runs = []
    for output in ("first", "second"):
        completed = run_command(
            "ita-segment",
            tmp_path / "scene.png",
            "--model",
            folder,
            "--labels-file",
            tmp_path / "classes.txt",
            "--output",
            tmp_path / output,
            env={"ITA_VOCABULARY_CACHE": str(cache)},
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert "Traceback" not in completed.stderr
        (cached,) = cache.glob("*.safetensors")
        runs.append((completed.stderr, cached.stat()))
    (first_err, first_stat), (second_err, second_stat) = runs
    # The first run encoded (its progress bar) and wrote the file; the second read it: no bar, the file untouched.
    assert "Encoding 520 synonyms x 2 prompt templates" in first_err
    assert "Encoding" not in second_err
    assert (second_stat.st_ino, second_stat.st_mtime_ns) == (first_stat.st_ino, first_stat.st_mtime_ns)
    first_map = np.asarray(Image.open(tmp_path / "first" / "scene_labels.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "second" / "scene_labels.png")), first_map)
