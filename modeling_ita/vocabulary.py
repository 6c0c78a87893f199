"""The vocabulary side: class names with synonyms, prompt-template text classifiers, and their cache.

A vocabulary is a list of classes; each class is one string of comma-separated synonyms
(`"sofa,couch"`). Every synonym is encoded with every prompt template; the embeddings are normalised,
averaged over templates and normalised again, giving one row per synonym. Classification takes the max
over a class's synonyms (`layers.classification_logits`).
"""

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["parse_vocabulary", "ITAVocabulary", "ITAVocabularyEncoder"]


def parse_vocabulary(class_names):
    """Validate a vocabulary and split each class into its synonyms.

    Returns a list (one entry per class) of lists of synonyms. Raises `ValueError` for an empty vocabulary,
    a class or synonym that is empty, a non-string entry, or duplicate class names.
    """
    if isinstance(class_names, str):
        raise ValueError(
            "The vocabulary must be a list of class names, got a single string "
            f"{class_names!r}; write synonyms of one class as one comma-separated entry, e.g. ['sofa,couch']"
        )
    class_names = list(class_names) if class_names is not None else []
    if not class_names:
        raise ValueError("The vocabulary is empty: give at least one class name")
    parsed, seen = [], {}
    for index, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ValueError(f"Class {index} of the vocabulary is {type(name).__name__}, not a string: {name!r}")
        synonyms = [synonym.strip() for synonym in name.split(",")]
        if not name.strip():
            raise ValueError(f"Class {index} of the vocabulary is an empty string")
        if any(not synonym for synonym in synonyms):
            raise ValueError(f"Class {index} of the vocabulary, {name!r}, has an empty synonym")
        key = ",".join(synonyms)
        if key in seen:
            raise ValueError(f"Duplicate class name {name!r} at positions {seen[key]} and {index} of the vocabulary")
        seen[key] = index
        parsed.append(synonyms)
    return parsed


@dataclass(frozen=True)
class ITAVocabulary:
    """An encoded vocabulary.

    Attributes:
        class_names: the K classes as given.
        synonyms: the S synonyms of all classes, class by class.
        synonym_to_class: `[S]` long, the class of each synonym.
        text_classifier: `[S, D]` template-averaged, L2-normalised synonym embeddings.
        overlap_mask: `[K]` float, 1 where a synonym of the class is among the training synonyms.
        name_embeddings: `[S + E, D]` L2-normalised text-tower embeddings of the bare synonyms followed by the E
            extra dominant-category candidates (`"other"`): what CLIP ranks the candidates with. None when not
            requested.
        text_query_embeddings: `[S + E, D]` the embeddings the chosen candidates' text queries are made from:
            `name_embeddings`, or with a category bank the bank's row of each name the bank holds (the original
            ITA looks only its chosen names up in the bank; it never ranks with it).
        missing_from_bank: the candidates the category bank lacks (their text queries come from the text tower).
        candidate_names: the S + E strings behind `name_embeddings`.
    """

    class_names: tuple
    synonyms: tuple
    synonym_to_class: torch.Tensor
    text_classifier: torch.Tensor
    overlap_mask: torch.Tensor
    name_embeddings: torch.Tensor | None = None
    text_query_embeddings: torch.Tensor | None = None
    missing_from_bank: tuple = ()
    candidate_names: tuple | None = None

    @property
    def num_classes(self):
        return len(self.class_names)


class ITAVocabularyEncoder:
    """Encodes vocabularies with the frozen CLIP text tower and keeps the last few in memory.

    The cache is keyed by the vocabulary, the templates, the device and the dtype, so a second call with the
    same vocabulary runs no text-encoder forward. Prompts are encoded `batch_size` at a time (bounded memory
    for large vocabularies such as A-847 x 14 templates) with the context cut to the longest prompt.
    """

    def __init__(self, templates, train_vocabulary, extra_candidates=(), batch_size=256, cache_size=8):
        self.templates = tuple(templates)
        self.extra_candidates = tuple(extra_candidates)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.train_synonyms = {s for synonyms in parse_vocabulary(train_vocabulary) for s in synonyms}
        self.category_bank = None
        self._cache = OrderedDict()

    def clear_cache(self):
        self._cache.clear()

    def set_category_bank(self, bank):
        """Make the text queries of chosen names from fixed embeddings (`{name: [D] tensor}`), as the original
        ITA does with `Category/category_tensor.pt`. The ranking still uses the text tower, as there. A chosen
        name the bank lacks takes its text-tower embedding, with a warning (the original raises a `KeyError`).
        `None` goes back to the text tower for the text queries too."""
        self.category_bank = None if bank is None else {name: value.reshape(-1) for name, value in bank.items()}
        self.clear_cache()

    def _text_query_embeddings(self, names, name_embeddings):
        """Bank rows (as float32, as the original casts them) for the names the bank holds, text-tower rows else."""
        if self.category_bank is None:
            return name_embeddings, ()
        rows = [
            self.category_bank[name].to(name_embeddings) if name in self.category_bank else name_embeddings[index]
            for index, name in enumerate(names)
        ]
        return torch.stack(rows), tuple(name for name in names if name not in self.category_bank)

    def _encode_texts(self, backbone, texts):
        # Batches of prompts of similar length: `encode_text` cuts each batch's context after its longest
        # prompt, so grouping by length cuts the padding the text tower runs on. Each embedding depends only
        # on its own tokens (causal attention), so the order changes nothing but float rounding.
        if not texts:
            return torch.empty(0, backbone.embed_dim)
        tokens = backbone.tokenize(texts)  # [N, context_length]
        order = torch.sort(tokens.argmax(dim=-1), stable=True).indices  # by end-of-text position
        embeddings = None
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = backbone.encode_text(tokens[rows], normalize=False).float()
            if embeddings is None:
                embeddings = batch.new_empty(len(texts), batch.shape[-1])
            embeddings[rows.to(batch.device)] = batch
        return embeddings  # [N, D]

    def encode(self, backbone, class_names, with_name_embeddings=False):
        """Encode `class_names` (a list of comma-separated synonym strings) into an `ITAVocabulary`."""
        parsed = parse_vocabulary(class_names)
        weight = backbone.clip_model.text_projection
        key = (tuple(class_names), self.templates, self.extra_candidates, with_name_embeddings, weight.device, weight.dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]

        synonyms = [synonym for class_synonyms in parsed for synonym in class_synonyms]
        synonym_to_class = torch.tensor(
            [index for index, class_synonyms in enumerate(parsed) for _ in class_synonyms], dtype=torch.long
        )
        prompts = [template.format(synonym) for synonym in synonyms for template in self.templates]
        prompt_embeddings = F.normalize(self._encode_texts(backbone, prompts), dim=-1)
        text_classifier = prompt_embeddings.view(len(synonyms), len(self.templates), -1).mean(dim=1)
        text_classifier = F.normalize(text_classifier, dim=-1)  # [S, D]
        overlap_mask = torch.tensor(
            [float(any(s in self.train_synonyms for s in class_synonyms)) for class_synonyms in parsed]
        )

        name_embeddings = text_query_embeddings = candidate_names = None
        missing_from_bank = ()
        if with_name_embeddings:
            candidate_names = tuple(synonyms) + self.extra_candidates
            name_embeddings = F.normalize(self._encode_texts(backbone, list(candidate_names)), dim=-1)
            text_query_embeddings, missing_from_bank = self._text_query_embeddings(candidate_names, name_embeddings)

        vocabulary = ITAVocabulary(
            class_names=tuple(class_names),
            synonyms=tuple(synonyms),
            synonym_to_class=synonym_to_class.to(weight.device),
            text_classifier=text_classifier.to(weight.device),
            overlap_mask=overlap_mask.to(weight.device),
            name_embeddings=None if name_embeddings is None else name_embeddings.to(weight.device),
            text_query_embeddings=None if text_query_embeddings is None else text_query_embeddings.to(weight.device),
            missing_from_bank=missing_from_bank,
            candidate_names=candidate_names,
        )
        self._cache[key] = vocabulary
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return vocabulary
