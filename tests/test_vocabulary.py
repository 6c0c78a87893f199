import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import processing_ita
from modeling_ita.clip_backbone import ITACLIPBackbone
from modeling_ita.vocabulary import ITAVocabularyEncoder
from processing_ita import ITAClassNames, parse_vocabulary, shared_synonyms


@pytest.fixture(scope="module")
def backbone():
    return ITACLIPBackbone(tiny_config())


def make_encoder(config, **kwargs):
    return ITAVocabularyEncoder(config.prompt_templates, config.train_vocabulary, ["other"], **kwargs)


def test_parse_vocabulary_splits_synonyms():
    parsed = parse_vocabulary(["cat", "sofa, couch", "wall"])
    assert parsed.synonyms == (("cat",), ("sofa", "couch"), ("wall",))
    # A sequence of the class strings as given, equal to the list it was made from.
    assert parsed == ["cat", "sofa, couch", "wall"] and list(parsed) == ["cat", "sofa, couch", "wall"]
    assert len(parsed) == 3 and parsed[1] == "sofa, couch" and parsed[1:] == ("sofa, couch", "wall")
    assert parsed.shared_synonyms == () and hash(parsed) == hash(("cat", "sofa, couch", "wall"))


def test_parse_vocabulary_returns_a_parsed_vocabulary_as_it_is():
    parsed = parse_vocabulary(["cat", "dog"])
    assert parse_vocabulary(parsed) is parsed
    assert parse_vocabulary(parsed, allow_shared_synonyms=True) is parsed


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        ([], "empty"),
        (None, "empty"),
        ("cat", "single string"),
        (["cat", ""], "Class 1 .* empty string"),
        (["cat", "sofa,,couch"], "empty synonym"),
        (["cat", "sofa, "], "empty synonym"),
        (["cat", "dog", "cat"], "Duplicate class name 'cat' at positions 0 and 2"),
        (["cat", 3], "not a string"),
    ],
)
def test_bad_vocabularies_raise_clear_errors(vocabulary, message):
    with pytest.raises(ValueError, match=message):
        parse_vocabulary(vocabulary)


def test_classifier_is_template_average_of_normalised_embeddings(backbone):
    config = tiny_config()
    encoder = make_encoder(config)
    vocabulary = encoder.encode(backbone, ["cat", "sofa,couch"])
    assert vocabulary.synonyms == ("cat", "sofa", "couch")
    assert vocabulary.synonym_to_class.tolist() == [0, 1, 1]
    # Direct computation at full context, one prompt at a time.
    rows = []
    for synonym in vocabulary.synonyms:
        prompts = [t.format(synonym) for t in config.prompt_templates]
        emb = backbone.encode_text(backbone.tokenize(prompts), truncate_context=False)
        rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    expected = torch.stack(rows)
    torch.testing.assert_close(vocabulary.text_classifier, expected, atol=1e-5, rtol=0)
    assert torch.allclose(vocabulary.text_classifier.norm(dim=-1), torch.ones(3))


def test_truncated_context_matches_full_context(backbone):
    texts = ["a photo of a cat.", "There is a large brick wall in the scene.", "x", "a photo of a sofa in the scene"]
    tokens = backbone.tokenize(texts)
    truncated = backbone.encode_text(tokens, truncate_context=True)
    full = backbone.encode_text(tokens, truncate_context=False)
    reference = backbone.clip_model.encode_text(tokens)  # open_clip's own 77-token path
    assert (truncated - full).abs().max() <= 1e-5
    assert (truncated - reference).abs().max() <= 1e-5


def test_second_call_runs_no_text_forward(backbone, monkeypatch):
    encoder = make_encoder(tiny_config())
    calls = []
    original = backbone.encode_text
    monkeypatch.setattr(backbone, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = encoder.encode(backbone, ["cat", "dog", "wall"])
    assert len(calls) > 0
    count = len(calls)
    second = encoder.encode(backbone, ["cat", "dog", "wall"])
    assert len(calls) == count
    assert second is first
    encoder.encode(backbone, ["cat", "dog"])  # a different vocabulary is encoded again
    assert len(calls) > count


def test_large_vocabularies_are_encoded_in_bounded_batches(backbone, monkeypatch):
    encoder = make_encoder(tiny_config(), batch_size=7)
    sizes = []
    original = backbone.encode_text
    monkeypatch.setattr(backbone, "encode_text", lambda tokens, **k: sizes.append(len(tokens)) or original(tokens, **k))
    classes = [f"thing number {i}" for i in range(20)]
    vocabulary = encoder.encode(backbone, classes)
    assert max(sizes) <= 7 and sum(sizes) == 20 * 2
    unbatched = make_encoder(tiny_config(), batch_size=1000)
    monkeypatch.setattr(backbone, "encode_text", original)
    torch.testing.assert_close(
        vocabulary.text_classifier, unbatched.encode(backbone, classes).text_classifier, atol=1e-5, rtol=0
    )


def test_overlap_mask_and_name_embeddings(backbone):
    encoder = make_encoder(tiny_config())  # training vocabulary: cat,kitty / dog / sofa,couch / wall / grass / sky
    vocabulary = encoder.encode(backbone, ["kitty,tiger", "car", "couch"], with_name_embeddings=True)
    assert vocabulary.overlap_mask.tolist() == [1.0, 0.0, 1.0]
    assert vocabulary.candidate_names == ("kitty", "tiger", "car", "couch", "other")
    expected = backbone.encode_text(backbone.tokenize(list(vocabulary.candidate_names)), normalize=True)
    torch.testing.assert_close(vocabulary.name_embeddings, expected, atol=1e-5, rtol=0)


def test_category_bank_gives_text_query_embeddings_and_never_the_ranking(backbone):
    encoder = make_encoder(tiny_config())
    text_tower = encoder.encode(backbone, ["cat", "wall"], with_name_embeddings=True)
    assert torch.allclose(text_tower.name_embeddings.norm(dim=-1), torch.ones(3))
    assert text_tower.text_query_embeddings is text_tower.name_embeddings and text_tower.missing_from_bank == ()
    bank = {name: torch.full((1, 32), float(i)).half() for i, name in enumerate(["cat", "car", "other"])}
    encoder.set_category_bank(bank)
    vocabulary = encoder.encode(backbone, ["cat", "wall"], with_name_embeddings=True)
    torch.testing.assert_close(vocabulary.name_embeddings, text_tower.name_embeddings)  # ranking: text tower
    assert vocabulary.text_query_embeddings[[0, 2], 0].tolist() == [0.0, 2.0]  # bank rows, as float32
    assert vocabulary.text_query_embeddings.dtype == torch.float32
    torch.testing.assert_close(vocabulary.text_query_embeddings[1], text_tower.name_embeddings[1])  # "wall"
    assert vocabulary.missing_from_bank == ("wall",)
    encoder.set_category_bank(None)
    assert encoder.encode(backbone, ["cat", "wall"], with_name_embeddings=True).missing_from_bank == ()


# ------------------------------------------------------------------------------------------------ shared synonyms
@pytest.mark.parametrize(
    "vocabulary, shared, first, other",
    [
        (["sofa,couch", "couch,sofa"], "couch", "'sofa,couch' (position 0)", "'couch,sofa' (position 1)"),
        (["cat", "wall", "Wall , brick wall"], "Wall", "'wall' (position 1)", "'Wall , brick wall' (position 2)"),
    ],
)
def test_a_synonym_of_two_classes_is_rejected_naming_both(vocabulary, shared, first, other):
    with pytest.raises(ValueError) as error:
        parse_vocabulary(vocabulary)
    message = str(error.value)
    assert f"Synonym {shared!r} names two classes" in message and first in message and other in message
    allowed = parse_vocabulary(vocabulary, allow_shared_synonyms=True)
    assert len(allowed) == len(vocabulary)
    assert allowed.shared_synonyms[0][0] == shared and shared_synonyms(allowed) == list(allowed.shared_synonyms)
    # The door that refuses them refuses the parsed value too, with the same message, without parsing it again.
    with pytest.raises(ValueError) as again:
        parse_vocabulary(allowed)
    assert str(again.value) == message


def test_the_model_side_accepts_shared_synonyms(backbone):
    # FC-CLIP's A-847 and PC-459 lists share synonyms between classes; the encoder takes them as they are.
    vocabulary = make_encoder(tiny_config()).encode(backbone, ["sofa,couch", "couch,settee"])
    assert vocabulary.synonyms == ("sofa", "couch", "couch", "settee")
    assert vocabulary.synonym_to_class.tolist() == [0, 0, 1, 1]


def test_the_encoder_reads_a_parsed_vocabulary_without_parsing_it_again(backbone, monkeypatch):
    parsed = parse_vocabulary(["sofa,couch", "couch,settee"], allow_shared_synonyms=True)
    encoder = make_encoder(tiny_config())
    calls = []
    split = processing_ita._split_classes
    monkeypatch.setattr(processing_ita, "_split_classes", lambda names: calls.append(names) or split(names))
    vocabulary = encoder.encode(backbone, parsed)
    assert calls == [] and vocabulary.class_names == ("sofa,couch", "couch,settee")
    assert vocabulary.synonym_to_class.tolist() == [0, 0, 1, 1]
    encoder.encode(backbone, ["cat", "wall"])  # a plain list is parsed, once
    assert calls == [["cat", "wall"]]
    # The same vocabulary as a list or parsed is one entry of the memory cache.
    assert encoder.encode(backbone, ["sofa,couch", "couch,settee"]) is vocabulary
    assert isinstance(parsed, ITAClassNames)


# ------------------------------------------------------------------------------------------------ long encodings
def test_encodings_of_more_than_one_batch_show_a_progress_bar(backbone, capsys):
    encoder = make_encoder(tiny_config(), batch_size=7, disk_cache_dir=None)
    encoder.encode(backbone, ["cat", "dog"])  # 4 prompts: one batch, no bar
    assert "Encoding" not in capsys.readouterr().err
    encoder.encode(backbone, [f"thing number {i}" for i in range(20)])
    err = capsys.readouterr().err
    assert "Encoding 20 synonyms x 2 prompt templates" in err and "40/40" in err


def count_text_forwards(monkeypatch, backbone):
    calls = []
    original = backbone.encode_text
    monkeypatch.setattr(backbone, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_disk_cache_serves_a_new_encoder_without_the_text_tower(backbone, monkeypatch, tmp_path):
    classes = [f"thing number {i}" for i in range(12)]

    def encoder(**kwargs):  # a fresh encoder stands for a new process: its memory cache is empty
        return make_encoder(tiny_config(), disk_cache_dir=tmp_path / "cache", disk_cache_min_prompts=0, **kwargs)

    first = encoder().encode(backbone, classes, with_name_embeddings=True)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1
    calls = count_text_forwards(monkeypatch, backbone)
    second = encoder().encode(backbone, classes, with_name_embeddings=True)
    assert calls == []
    assert torch.equal(second.text_classifier, first.text_classifier)
    assert torch.equal(second.name_embeddings, first.name_embeddings)
    assert second.candidate_names == first.candidate_names and second.text_query_embeddings is not None

    # Anything the embeddings depend on makes a new entry: the names, the templates, the text tower's weights.
    encoder().encode(backbone, classes[:-1], with_name_embeddings=True)
    assert len(calls) > 0
    calls.clear()
    ITAVocabularyEncoder(
        ["a {}"], tiny_config().train_vocabulary, ["other"], disk_cache_dir=tmp_path / "cache", disk_cache_min_prompts=0
    ).encode(backbone, classes)
    assert len(calls) > 0
    calls.clear()
    weight = backbone.clip_model.ln_final.weight
    # Not a uniform shift: LayerNorm weights of ones scaled alike would only scale the normalised embeddings.
    shift = torch.linspace(0.0, 1.0, weight.numel()).view_as(weight)
    with torch.no_grad():
        weight.add_(shift)  # in place: same tensor, new version
    try:
        changed = encoder().encode(backbone, classes, with_name_embeddings=True)
        assert len(calls) > 0
        assert not torch.allclose(changed.text_classifier, first.text_classifier)
    finally:
        with torch.no_grad():
            weight.sub_(shift)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4


def test_disk_cache_is_off_for_small_vocabularies_or_when_asked(backbone, monkeypatch, tmp_path):
    make_encoder(tiny_config(), disk_cache_dir=tmp_path / "small", disk_cache_min_prompts=100).encode(
        backbone, ["cat", "dog"]
    )
    assert not (tmp_path / "small").exists()  # 4 prompts: not worth hashing the text tower
    make_encoder(tiny_config(), disk_cache_dir=None, disk_cache_min_prompts=0).encode(backbone, ["cat", "dog"])

    from modeling_ita.vocabulary import default_vocabulary_cache_dir

    monkeypatch.setenv("ITA_VOCABULARY_CACHE", "off")
    assert default_vocabulary_cache_dir() is None
    make_encoder(tiny_config(), disk_cache_min_prompts=0).encode(backbone, ["cat", "dog"])
    monkeypatch.delenv("ITA_VOCABULARY_CACHE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(tmp_path / "hf-home"))
    assert default_vocabulary_cache_dir() == tmp_path / "hf-home" / "ita" / "vocabularies"
    monkeypatch.setenv("ITA_VOCABULARY_CACHE", str(tmp_path / "mine"))
    make_encoder(tiny_config(), disk_cache_min_prompts=0).encode(backbone, ["cat", "dog"])
    assert len(list((tmp_path / "mine").glob("*.safetensors"))) == 1
    assert not (tmp_path / "hf-home").exists()


def test_a_corrupt_cache_file_is_replaced(backbone, monkeypatch, tmp_path, caplog):
    def encoder():
        return make_encoder(tiny_config(), disk_cache_dir=tmp_path, disk_cache_min_prompts=0)

    expected = encoder().encode(backbone, ["cat", "dog"])
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    again = encoder().encode(backbone, ["cat", "dog"])
    assert "Ignoring the unreadable vocabulary cache file" in caplog.text
    torch.testing.assert_close(again.text_classifier, expected.text_classifier, atol=0, rtol=0)
    assert encoder()._read_cache_file(path, 2, None) is not None  # rewritten
