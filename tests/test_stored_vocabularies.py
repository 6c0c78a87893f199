"""Encoded vocabularies stored in a model folder, the disk cache's keys and writes, and over-long class names."""

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import save_tiny_model, tiny_config
from safetensors.torch import load_file

from modeling_ita import ITAForOpenVocabSegmentation
from modeling_ita.clip_backbone import ITACLIPBackbone
from modeling_ita.vocabulary import STORED_VOCABULARIES_DIR, ITAVocabularyEncoder

CLASSES = ["cat", "sofa,couch", "wall", "potted plant"]
LOGGER = "modeling_ita.vocabulary"


def count_text_forwards(monkeypatch, text_tower):
    calls = []
    original = text_tower.encode_text
    monkeypatch.setattr(text_tower, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.fixture
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("ITA_VOCABULARY_CACHE", "off")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny ITA saved with one stored vocabulary, and that vocabulary as its own model encodes it."""
    folder = save_tiny_model(tmp_path_factory.mktemp("stored"), seed=1)
    model = ITAForOpenVocabSegmentation.from_pretrained(folder)
    model.save_pretrained(folder, vocabularies={"household": CLASSES})
    return folder


def test_a_stored_vocabulary_is_used_without_the_text_tower(model_folder, monkeypatch, no_disk_cache):
    (stored,) = (model_folder / STORED_VOCABULARIES_DIR).glob("*.safetensors")
    model = ITAForOpenVocabSegmentation.from_pretrained(model_folder)
    # Keyed as the disk cache is: the hash of what the encoding depends on.
    encoder = model.vocabulary_encoder
    description = encoder.vocabulary_description(model.backbone, CLASSES, with_name_embeddings=True)
    assert stored.name == f"{encoder.vocabulary_key(description)}.safetensors"

    calls = count_text_forwards(monkeypatch, model.backbone)
    vocabulary = model.encode_vocabulary(CLASSES)
    assert calls == []
    tensors = load_file(str(stored))
    assert torch.equal(vocabulary.text_classifier, tensors["text_classifier"])
    assert torch.equal(vocabulary.name_embeddings, tensors["name_embeddings"])
    # The same numbers the text tower gives (a fresh encoder, nothing cached, no folder).
    fresh = ITAVocabularyEncoder(
        model.config.prompt_templates,
        model.config.train_vocabulary,
        model.config.dominant_category_extra_names,
        batch_size=model.config.text_batch_size,
        disk_cache_dir=None,
    ).encode(model.backbone, CLASSES, with_name_embeddings=True)
    assert len(calls) > 0
    torch.testing.assert_close(vocabulary.text_classifier, fresh.text_classifier, atol=0, rtol=0)
    torch.testing.assert_close(vocabulary.name_embeddings, fresh.name_embeddings, atol=0, rtol=0)

    # Another vocabulary is not stored: the text tower encodes it.
    calls.clear()
    model.encode_vocabulary(["cat", "dog"])
    assert len(calls) > 0


def test_a_stored_vocabulary_of_other_weights_is_passed_over_with_a_warning(
    model_folder, tmp_path, monkeypatch, caplog, no_disk_cache
):
    (stored,) = (model_folder / STORED_VOCABULARIES_DIR).glob("*.safetensors")
    other = save_tiny_model(tmp_path / "other", seed=2)  # other weights, the same config
    model = ITAForOpenVocabSegmentation.from_pretrained(other)
    # 1. The first model's file copied in under its own name: never found for these weights; the warning says why.
    (other / STORED_VOCABULARIES_DIR).mkdir()
    (other / STORED_VOCABULARIES_DIR / stored.name).write_bytes(stored.read_bytes())
    calls = count_text_forwards(monkeypatch, model.backbone)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vocabulary = model.encode_vocabulary(CLASSES)
    assert len(calls) > 0
    assert "encoded with other text-tower weights than this model's: it is not used" in caplog.text
    assert stored.name in caplog.text
    assert not torch.equal(vocabulary.text_classifier, load_file(str(stored))["text_classifier"])

    # 2. The same file renamed to this model's key (a hand-copied file): its description tells, it is ignored.
    model = ITAForOpenVocabSegmentation.from_pretrained(other)
    encoder = model.vocabulary_encoder
    key = encoder.vocabulary_key(encoder.vocabulary_description(model.backbone, CLASSES, True))
    (other / STORED_VOCABULARIES_DIR / stored.name).rename(other / STORED_VOCABULARIES_DIR / f"{key}.safetensors")
    caplog.clear()
    calls = count_text_forwards(monkeypatch, model.backbone)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = model.encode_vocabulary(CLASSES)
    assert len(calls) > 0
    assert "Ignoring the stored vocabulary" in caplog.text and "differs in text-tower weights" in caplog.text
    torch.testing.assert_close(again.text_classifier, vocabulary.text_classifier, atol=0, rtol=0)


def test_a_stored_vocabulary_of_other_templates_is_passed_over(model_folder, monkeypatch, caplog, no_disk_cache):
    model = ITAForOpenVocabSegmentation.from_pretrained(model_folder)
    templates = ["a photo of a {}."]
    model.vocabulary_encoder = ITAVocabularyEncoder(
        templates, model.config.train_vocabulary, model.config.dominant_category_extra_names
    )
    calls = count_text_forwards(monkeypatch, model.backbone)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        model.encode_vocabulary(CLASSES)
    assert len(calls) > 0
    assert "other prompt templates" in caplog.text and "it is not used" in caplog.text


def test_save_pretrained_refuses_a_flat_list_of_names(tmp_path):
    model = ITAForOpenVocabSegmentation(tiny_config())
    with pytest.raises(ValueError, match=r"list of vocabularies, each a list of class names"):
        model.save_pretrained(tmp_path / "flat", vocabularies=["cat", "dog"])
    paths = model.store_vocabularies(tmp_path / "lists", [["cat", "dog"], ["wall", "floor", "sky"]])
    assert len(paths) == 2 and all(Path(path).is_file() for path in paths)


# ------------------------------------------------------------------------------------------------ keys
class FakeTextTower:
    """The text side as the encoder reads it, with a fixed fingerprint, on any device and in any dtype."""

    context_length = 77
    embed_dim = 4

    def __init__(self, device="cpu", dtype=torch.float32):
        self.clip_model = SimpleNamespace(text_projection=torch.empty(0, device=device, dtype=dtype))

    def weights_fingerprint(self):
        return "f" * 64


def test_the_cache_key_holds_the_dtype_not_the_device():
    encoder = ITAVocabularyEncoder(["a {}"], ["cat"])

    def key(tower):
        return encoder.vocabulary_key(encoder.vocabulary_description(tower, CLASSES, False))

    cpu = key(FakeTextTower("cpu"))
    # `meta` stands for cuda:0 / cuda:1 here: a vocabulary encoded on one device is found on every other one.
    assert key(FakeTextTower("meta")) == cpu
    assert key(FakeTextTower("cpu", torch.bfloat16)) != cpu
    assert "device" not in encoder.vocabulary_description(FakeTextTower(), CLASSES, False)


def test_the_fingerprint_is_equal_for_equal_weights_on_any_device():
    first, second = ITACLIPBackbone(tiny_config()), ITACLIPBackbone(tiny_config())
    second.load_state_dict(first.state_dict())
    encoder = ITAVocabularyEncoder(["a {}"], ["cat"])
    assert encoder.text_tower_fingerprint(first) == ITAVocabularyEncoder(["a {}"], ["cat"]).text_tower_fingerprint(
        second
    )
    with pytest.raises(TypeError, match="weights_fingerprint"):
        encoder.text_tower_fingerprint(SimpleNamespace(clip_model=SimpleNamespace(text_projection=torch.empty(0))))


# ------------------------------------------------------------------------------------------ atomic writes
def test_cache_writes_at_once_never_show_half_a_file(tmp_path):
    path = tmp_path / "cache" / "key.safetensors"
    tensors = {"text_classifier": torch.randn(3000, 64)}  # ~750 kB: writes take a while
    errors, reads = [], []
    stop = threading.Event()

    def write(seed):
        for _ in range(15):
            ITAVocabularyEncoder._write_cache_file(path, {k: v + seed for k, v in tensors.items()}, ["cat"])

    def read():
        while not stop.is_set():
            if path.is_file():
                try:
                    loaded = load_file(str(path))["text_classifier"]
                except Exception as error:  # noqa: BLE001 - the test counts them
                    errors.append(error)
                else:
                    offset = loaded - tensors["text_classifier"]
                    reads.append(bool(torch.allclose(offset, offset.flatten()[0].expand_as(offset))))

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(3)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert errors == [] and reads and all(reads)  # every read a whole file, of one writer
    assert [p.name for p in path.parent.iterdir()] == ["key.safetensors"]  # no temporary file left


# ---------------------------------------------------------------------------------------------- long names
def test_class_names_longer_than_the_context_are_reported_once(caplog):
    backbone = ITACLIPBackbone(tiny_config())
    encoder = ITAVocabularyEncoder(["a photo of a {}."], ["cat"], disk_cache_dir=None)
    long_name = " ".join(f"word{i}" for i in range(400))  # ~2,700 characters, far beyond 77 tokens
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        vocabulary = encoder.encode(backbone, ["cat", long_name])
        encoder.clear_cache()
        encoder.encode(backbone, ["cat", long_name])  # the same vocabulary: no second warning
    records = [r for r in caplog.records if "longer than the text tower's context" in r.getMessage()]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "class 1 ('word0 word1" in message and f"{len(long_name):,} characters" in message
    assert f"{backbone.context_length} used" in message and "tokens given" in message
    given = int(message.split("characters): ")[1].split(" tokens given")[0].replace(",", ""))
    assert given > 400
    assert vocabulary.num_classes == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        encoder.encode(backbone, ["cat", "a rather long but fine name of forty characters"])
    assert "longer than" not in caplog.text
