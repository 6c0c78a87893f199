"""The vocabulary side: class names with synonyms, prompt-template text classifiers, and their caches.

A vocabulary is a list of classes; each class is one string of comma-separated synonyms
(`"sofa,couch"`). Every synonym is encoded with every prompt template; the embeddings are normalised,
averaged over templates and normalised again, giving one row per synonym. Classification takes the max
over a class's synonyms (`layers.classification_logits`).

Encoded vocabularies are kept in memory (the last few) and, for large ones, on disk: the text tower's outputs
for A-847 (1,342 synonyms x 14 templates) take a quarter of an hour on a CPU, and they depend only on the text
tower's weights, the templates and the names. The disk cache lives under the Hugging Face home
(`$HF_HOME/ita/vocabularies`); `ITA_VOCABULARY_CACHE=DIR` moves it, `ITA_VOCABULARY_CACHE=off` turns it off.
"""

import hashlib
import json
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.utils.logging import tqdm

from processing_ita import ITAClassNames, parse_vocabulary

logger = logging.getLogger(__name__)

__all__ = [
    "VOCABULARY_CACHE_ENV",
    "default_vocabulary_cache_dir",
    "ITAVocabulary",
    "ITAVocabularyEncoder",
]

VOCABULARY_CACHE_ENV = "ITA_VOCABULARY_CACHE"
_CACHE_OFF = ("0", "off", "false", "no", "none")
# Bumped when what a cache file holds, or how it is computed, changes.
_CACHE_FORMAT = 1


def default_vocabulary_cache_dir() -> Path | None:
    """Where encoded vocabularies are kept on disk: `$ITA_VOCABULARY_CACHE`, else `$HF_HOME/ita/vocabularies`;
    None when `ITA_VOCABULARY_CACHE` is `off` (or `0`, `false`, `no`, `none`)."""
    value = os.environ.get(VOCABULARY_CACHE_ENV)
    if value is not None and value.strip().lower() in _CACHE_OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path(hf_constants.HF_HOME) / "ita" / "vocabularies"


class ITATextTower(Protocol):
    """What the encoder needs of a CLIP text side: `ITACLIPBackbone`, or the ONNX runtime's exported text tower."""

    clip_model: Any  # its `text_projection` tells the device and dtype; the PyTorch model's also holds the weights

    @property
    def embed_dim(self) -> int: ...

    def tokenize(self, texts: list[str]) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor, normalize: bool = ...) -> torch.Tensor: ...


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

    class_names: tuple[str, ...]
    synonyms: tuple[str, ...]
    synonym_to_class: torch.Tensor
    text_classifier: torch.Tensor
    overlap_mask: torch.Tensor
    name_embeddings: torch.Tensor | None = None
    text_query_embeddings: torch.Tensor | None = None
    missing_from_bank: tuple[str, ...] = ()
    candidate_names: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warn_missing_from_bank(self, chosen_names: Iterable[str], stacklevel: int = 2) -> None:
        """One `UserWarning` naming the chosen dominant categories that the category bank lacks: their text queries
        use the CLIP text tower's embeddings instead. `stacklevel` as `warnings.warn`'s, from the caller."""
        missing = sorted(set(chosen_names) & set(self.missing_from_bank))
        if missing:
            warnings.warn(
                f"Dominant categories {missing} are not in the category bank: their text queries use the CLIP text "
                "tower's embeddings instead (the original ITA raises a KeyError here)",
                stacklevel=stacklevel + 1,
            )


class ITAVocabularyEncoder:
    """Encodes vocabularies with the frozen CLIP text tower; keeps the last few in memory and large ones on disk.

    The memory cache is keyed by the vocabulary, the templates, the device and the dtype, so a second call with
    the same vocabulary runs no text-encoder forward. Prompts are encoded `batch_size` at a time (bounded memory
    for large vocabularies such as A-847 x 14 templates) with the context cut to the longest prompt, with a
    progress bar when there is more than one batch.

    Vocabularies of at least `disk_cache_min_prompts` prompts are also stored on disk (`disk_cache_dir`, by
    default `default_vocabulary_cache_dir()`; None turns it off), keyed by a hash of the text tower's weights,
    the templates, the names, the extra candidates, the device type, the dtype and the batch size, so a new
    process finds them without running the text tower. Only the text tower's outputs are stored: the category
    bank's rows are looked up again at each encoding. Hashing the text tower reads all its weights once per model
    (timed in `benchmarks/README.md`, Vocabulary), which small vocabularies would not repay.
    """

    def __init__(
        self,
        templates: Iterable[str],
        train_vocabulary: Sequence[str],
        extra_candidates: Iterable[str] = (),
        batch_size: int = 256,
        cache_size: int = 8,
        disk_cache_dir: str | os.PathLike[str] | None = "default",
        disk_cache_min_prompts: int = 1024,
    ) -> None:
        self.templates = tuple(templates)
        self.extra_candidates = tuple(extra_candidates)
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.disk_cache_dir = disk_cache_dir
        self.disk_cache_min_prompts = disk_cache_min_prompts
        parsed = parse_vocabulary(train_vocabulary, allow_shared_synonyms=True)
        self.train_synonyms = {s for synonyms in parsed.synonyms for s in synonyms}
        self.category_bank: dict[str, torch.Tensor] | None = None
        self._cache: OrderedDict[tuple[Any, ...], ITAVocabulary] = OrderedDict()
        self._fingerprint: tuple[tuple[tuple[str, int, int], ...] | None, str] = (
            None,
            "",
        )  # (identity of the text tower's tensors, their hash)

    def clear_cache(self) -> None:
        """Forget the vocabularies kept in memory (the disk cache stays)."""
        self._cache.clear()

    def set_category_bank(self, bank: Mapping[str, torch.Tensor] | None) -> None:
        """Make the text queries of chosen names from fixed embeddings (`{name: [D] tensor}`), as the original
        ITA does with `Category/category_tensor.pt`. The ranking still uses the text tower, as there. A chosen
        name the bank lacks takes its text-tower embedding, with a warning (the original raises a `KeyError`).
        `None` goes back to the text tower for the text queries too."""
        self.category_bank = None if bank is None else {name: value.reshape(-1) for name, value in bank.items()}
        self.clear_cache()

    def _text_query_embeddings(
        self, names: Sequence[str], name_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Bank rows (as float32, as the original casts them) for the names the bank holds, text-tower rows else."""
        if self.category_bank is None:
            return name_embeddings, ()
        rows = [
            self.category_bank[name].to(name_embeddings) if name in self.category_bank else name_embeddings[index]
            for index, name in enumerate(names)
        ]
        return torch.stack(rows), tuple(name for name in names if name not in self.category_bank)

    def _encode_texts(
        self, backbone: ITATextTower, texts: list[str], description: str = "Encoding texts"
    ) -> torch.Tensor:
        # Batches of prompts of similar length: `encode_text` cuts each batch's context after its longest
        # prompt, so grouping by length cuts the padding the text tower runs on. Each embedding depends only
        # on its own tokens (causal attention), so the order changes nothing but float rounding.
        if not texts:
            return torch.empty(0, backbone.embed_dim)
        tokens = backbone.tokenize(texts)  # [N, context_length]
        order = torch.sort(tokens.argmax(dim=-1), stable=True).indices  # by end-of-text position
        embeddings: torch.Tensor | None = None
        with tqdm(total=len(texts), desc=description, unit="prompt", disable=len(texts) <= self.batch_size) as bar:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = backbone.encode_text(tokens[rows], normalize=False).float()
                if embeddings is None:
                    embeddings = batch.new_empty(len(texts), batch.shape[-1])
                embeddings[rows.to(batch.device)] = batch
                bar.update(len(rows))
        assert embeddings is not None  # texts is not empty
        return embeddings  # [N, D]

    # ------------------------------------------------------------------------------------------------ disk cache
    def _cache_folder(self) -> Path | None:
        folder = default_vocabulary_cache_dir() if self.disk_cache_dir == "default" else self.disk_cache_dir
        return None if folder is None else Path(folder)

    def text_tower_fingerprint(self, backbone: ITATextTower) -> str:
        """SHA-256 of the text tower's weights (names, shapes, dtypes and bytes), computed once per set of
        tensors: loading other weights (new tensors, or in-place copies, which bump their version) recomputes it."""
        tensors = [
            (name, tensor)
            for name, tensor in backbone.clip_model.state_dict(keep_vars=True).items()
            if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias", "attn_mask")
        ]
        identity = tuple((name, tensor.data_ptr(), tensor._version) for name, tensor in tensors)
        if self._fingerprint[0] != identity:
            digest = hashlib.sha256()
            for name, tensor in tensors:
                tensor = tensor.detach()
                digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
                digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = (identity, digest.hexdigest())
        return self._fingerprint[1]

    def _disk_cache_path(
        self,
        backbone: ITATextTower,
        class_names: Sequence[str],
        with_name_embeddings: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Path | None:
        folder = self._cache_folder()
        if folder is None:
            return None
        description = {
            "format": _CACHE_FORMAT,
            "text_tower": self.text_tower_fingerprint(backbone),
            "templates": list(self.templates),
            "class_names": list(class_names),
            "extra_candidates": list(self.extra_candidates) if with_name_embeddings else None,
            "device": device.type,
            "dtype": str(dtype),
            "batch_size": self.batch_size,
        }
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
        return folder / f"{key}.safetensors"

    @staticmethod
    def _read_cache_file(
        path: Path, num_synonyms: int, num_candidates: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as error:
            logger.warning("Ignoring the unreadable vocabulary cache file %s (%s); encoding again", path, error)
            return None
        classifier, names = tensors.get("text_classifier"), tensors.get("name_embeddings")
        if (
            classifier is None
            or classifier.shape[0] != num_synonyms
            or (num_candidates is not None and (names is None or names.shape[0] != num_candidates))
        ):
            logger.warning("Ignoring the vocabulary cache file %s: it does not hold this vocabulary", path)
            return None
        return classifier, names

    @staticmethod
    def _write_cache_file(path: Path, tensors: dict[str, torch.Tensor], class_names: Sequence[str]) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            metadata = {"format": "pt", "num_classes": str(len(class_names)), "first_class": class_names[0]}
            save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, str(temporary), metadata)
            os.replace(temporary, path)  # atomic: processes encoding the same vocabulary at once never see half a file
        except OSError as error:
            temporary.unlink(missing_ok=True)
            logger.warning(
                "Cannot write the vocabulary cache %s (%s); set %s=off to stop trying",
                path,
                error,
                VOCABULARY_CACHE_ENV,
            )

    # ---------------------------------------------------------------------------------------------------- encode
    def _encode_uncached(
        self, backbone: ITATextTower, synonyms: list[str], with_name_embeddings: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text tower's outputs: `[S, D]` template-averaged classifier and `[S + E, D]` name embeddings."""
        prompts = [template.format(synonym) for synonym in synonyms for template in self.templates]
        description = f"Encoding {len(synonyms)} synonyms x {len(self.templates)} prompt templates"
        prompt_embeddings = F.normalize(self._encode_texts(backbone, prompts, description), dim=-1)
        text_classifier = prompt_embeddings.view(len(synonyms), len(self.templates), -1).mean(dim=1)
        text_classifier = F.normalize(text_classifier, dim=-1)  # [S, D]
        name_embeddings = None
        if with_name_embeddings:
            candidates = list(synonyms) + list(self.extra_candidates)
            name_embeddings = F.normalize(
                self._encode_texts(backbone, candidates, "Encoding dominant-category candidates"), dim=-1
            )
        return text_classifier, name_embeddings

    def encode(
        self, backbone: ITATextTower, class_names: ITAClassNames | Sequence[str], with_name_embeddings: bool = False
    ) -> ITAVocabulary:
        """Encode a vocabulary into an `ITAVocabulary`: an `ITAClassNames` (`parse_vocabulary`'s, read as it is) or a
        list of comma-separated synonym strings (parsed here, once). Synonyms shared by two classes are accepted:
        FC-CLIP's own A-847 and PC-459 lists have some."""
        parsed = parse_vocabulary(class_names, allow_shared_synonyms=True).synonyms
        weight = backbone.clip_model.text_projection
        key = (
            tuple(class_names),
            self.templates,
            self.extra_candidates,
            with_name_embeddings,
            weight.device,
            weight.dtype,
        )
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]

        synonyms = [synonym for class_synonyms in parsed for synonym in class_synonyms]
        synonym_to_class = torch.tensor(
            [index for index, class_synonyms in enumerate(parsed) for _ in class_synonyms], dtype=torch.long
        )
        num_candidates = len(synonyms) + len(self.extra_candidates) if with_name_embeddings else None
        cached = path = None
        if len(synonyms) * len(self.templates) >= self.disk_cache_min_prompts:
            path = self._disk_cache_path(backbone, class_names, with_name_embeddings, weight.device, weight.dtype)
            if path is not None and path.is_file():
                cached = self._read_cache_file(path, len(synonyms), num_candidates)
        if cached is not None:
            logger.info("Read the encoded vocabulary (%d classes) from %s", len(class_names), path)
            text_classifier, name_embeddings = cached
        else:
            text_classifier, name_embeddings = self._encode_uncached(backbone, synonyms, with_name_embeddings)
            if path is not None:
                tensors = {"text_classifier": text_classifier}
                if name_embeddings is not None:
                    tensors["name_embeddings"] = name_embeddings
                self._write_cache_file(path, tensors, list(class_names))
        overlap_mask = torch.tensor(
            [float(any(s in self.train_synonyms for s in class_synonyms)) for class_synonyms in parsed]
        )

        text_query_embeddings = candidate_names = None
        missing_from_bank: tuple[str, ...] = ()
        if name_embeddings is not None:  # with_name_embeddings
            candidate_names = tuple(synonyms) + self.extra_candidates
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
