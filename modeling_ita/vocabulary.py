"""The vocabulary side: class names with synonyms, prompt-template text classifiers, and their caches.

A vocabulary is a list of classes; each class is one string of comma-separated synonyms
(`"sofa,couch"`). Every synonym is encoded with every prompt template; the embeddings are normalised,
averaged over templates and normalised again, giving one row per synonym. Classification takes the max
over a class's synonyms (`layers.classification_logits`).

Encoded vocabularies are kept in memory (the last few) and, for large ones, on disk: the text tower's outputs
for A-847 (1,342 synonyms x 14 templates) take a quarter of an hour on a CPU, and they depend only on the text
tower's weights, the templates and the names. The disk cache lives under the Hugging Face home
(`$HF_HOME/ita/vocabularies`); `ITA_VOCABULARY_CACHE=DIR` moves it, `ITA_VOCABULARY_CACHE=off` turns it off.

A model folder can also hold encoded vocabularies (`vocabularies/<key>.safetensors`, keyed as the disk cache is:
`model.save_pretrained(folder, vocabularies=[...])`, `ita-convert --store-vocabularies`), so the first run of a
fresh machine with such a vocabulary starts at once. The encoder looks in the model's folder first, then in the
disk cache, and encodes only when neither holds the vocabulary. A stored file of other text-tower weights,
templates or dtype is never used: it is passed over with a warning that says what differs.
"""

import functools
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers.utils.logging import tqdm

from processing_ita import ITAClassNames, parse_vocabulary

logger = logging.getLogger(__name__)

__all__ = [
    "STORED_VOCABULARIES_DIR",
    "VOCABULARY_CACHE_ENV",
    "default_vocabulary_cache_dir",
    "ITAVocabulary",
    "ITAVocabularyEncoder",
]

VOCABULARY_CACHE_ENV = "ITA_VOCABULARY_CACHE"
_CACHE_OFF = ("0", "off", "false", "no", "none")
# Bumped when what a cache file holds, or how it is computed, changes. 2: the key no longer holds the device type
# (a vocabulary encoded on one device serves every other one in the same dtype), the file holds its description.
_CACHE_FORMAT = 2
# The folder of a model folder that holds its stored vocabularies (`<key>.safetensors`, keyed as the disk cache).
STORED_VOCABULARIES_DIR = "vocabularies"
# The safetensors metadata entry that holds a cache file's description (what its key is the hash of).
_DESCRIPTION_METADATA = "ita_vocabulary"
# What a description's entries mean, for the warning about a stored file of another encoding.
_DESCRIPTION_FIELDS = {
    "format": "file format",
    "text_tower": "text-tower weights",
    "templates": "prompt templates",
    "extra_candidates": "dominant-category candidates",
    "dtype": "dtype",
    "batch_size": "text batch size",
}


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
    context_length: int  # tokens the text tower reads; longer prompts are cut (and reported)

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
        self._warned: set[Any] = set()  # what was warned about once (long names, stored files of other weights)

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
        """A SHA-256 that names the text tower's weights: equal for equal weights, whatever runs them.

        A text tower with its own `weights_fingerprint()` (the ONNX runtime's exported one) gives it. For a PyTorch
        CLIP it is the hash of the text side's tensors (names, shapes, dtypes and bytes), computed once per set of
        tensors: loading other weights (new tensors, or in-place copies, which bump their version) recomputes it.
        The device the tensors are on changes nothing."""
        own = getattr(backbone, "weights_fingerprint", None)
        if callable(own):
            return str(own())
        state_dict = getattr(backbone.clip_model, "state_dict", None)
        if state_dict is None:
            raise TypeError(
                f"{type(backbone).__name__} has neither a weights_fingerprint() nor a PyTorch clip_model: the "
                "vocabulary cache cannot tell its weights"
            )
        tensors = [
            (name, tensor)
            for name, tensor in state_dict(keep_vars=True).items()
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

    def vocabulary_description(
        self,
        backbone: ITATextTower,
        class_names: Sequence[str],
        with_name_embeddings: bool,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """What an encoded vocabulary depends on: the text tower's weights, the templates, the names, the extra
        candidates, the dtype (the text tower's by default) and the batch size. Not the device: a vocabulary
        encoded on `cuda:0` serves `cuda:1` and the CPU alike (float rounding apart, as the batch order's)."""
        dtype = backbone.clip_model.text_projection.dtype if dtype is None else dtype
        return {
            "format": _CACHE_FORMAT,
            "text_tower": self.text_tower_fingerprint(backbone),
            "templates": list(self.templates),
            "class_names": list(class_names),
            "extra_candidates": list(self.extra_candidates) if with_name_embeddings else None,
            "dtype": str(dtype),
            "batch_size": self.batch_size,
        }

    @staticmethod
    def vocabulary_key(description: Mapping[str, Any]) -> str:
        """The file name stem of a vocabulary in the disk cache and in a model folder: the SHA-256 of its
        description (`vocabulary_description`)."""
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()

    def _disk_cache_path(self, key: str) -> Path | None:
        folder = self._cache_folder()
        return None if folder is None else folder / f"{key}.safetensors"

    @staticmethod
    def _read_cache_file(
        path: Path,
        num_synonyms: int,
        num_candidates: int | None,
        description: Mapping[str, Any] | None = None,
        what: str = "vocabulary cache file",
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The file's `(text_classifier, name_embeddings)`, or None (with a warning) when it cannot be read or holds
        another vocabulary. With `description`, a file that describes itself must describe exactly this one."""
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (OSError, SafetensorError) as error:
            logger.warning("Ignoring the unreadable %s %s (%s); encoding again", what, path, error)
            return None
        classifier, names = tensors.get("text_classifier"), tensors.get("name_embeddings")
        differences: list[str] = []
        if description is not None and _DESCRIPTION_METADATA in metadata:
            differences = _description_differences(_parse_description(metadata[_DESCRIPTION_METADATA]), description)
        if (
            classifier is None
            or classifier.shape[0] != num_synonyms
            or (num_candidates is not None and (names is None or names.shape[0] != num_candidates))
            or differences
        ):
            because = f" (it differs in {', '.join(differences)})" if differences else ""
            logger.warning("Ignoring the %s %s: it does not hold this vocabulary%s", what, path, because)
            return None
        return classifier, names

    @staticmethod
    def _write_cache_file(
        path: Path,
        tensors: dict[str, torch.Tensor],
        class_names: Sequence[str],
        description: Mapping[str, Any] | None = None,
        label: str | None = None,
        raise_errors: bool = False,
    ) -> None:
        """Write atomically: to a temporary file of a name no other writer uses (process or thread), then renamed
        over `path`, so a reader sees the old file or the new one, never half of one, and writers at once only
        replace a whole file by another whole one."""
        temporary: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(handle)
            temporary = Path(name)
            metadata = {"format": "pt", "num_classes": str(len(class_names)), "first_class": class_names[0]}
            if description is not None:
                metadata[_DESCRIPTION_METADATA] = json.dumps(description, sort_keys=True)
            if label is not None:
                metadata["label"] = label
            save_file({key: value.contiguous().cpu() for key, value in tensors.items()}, str(temporary), metadata)
            os.replace(temporary, path)  # atomic: processes encoding the same vocabulary at once never see half a file
        except OSError as error:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            if raise_errors:
                raise
            logger.warning(
                "Cannot write the vocabulary cache %s (%s); set %s=off to stop trying",
                path,
                error,
                VOCABULARY_CACHE_ENV,
            )

    # ---------------------------------------------------------------------------------------- stored vocabularies
    def _stored_file(self, model_folder: str | os.PathLike[str], key: str) -> Path | None:
        """The stored vocabulary `key` of a model folder (a local folder, or a Hub repository's file when it can be
        had), or None."""
        relative = f"{STORED_VOCABULARIES_DIR}/{key}.safetensors"
        folder = Path(model_folder)
        if folder.is_dir():
            path = folder / relative
            return path if path.is_file() else None
        if folder.exists() or os.path.isabs(model_folder) or str(model_folder).count("/") > 1:
            return None  # a file, or no Hub id
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_folder), relative)
            if isinstance(cached, str):
                return Path(cached)
            if cached is not None or hf_constants.HF_HUB_OFFLINE:  # known to be absent, or no asking
                return None
            return Path(hf_hub_download(str(model_folder), relative))
        except Exception as error:  # noqa: BLE001 - no such file, no network, not a repository: encode instead
            logger.debug("No stored vocabulary %s in %s (%s)", relative, model_folder, error)
            return None

    def _warn_other_stored(self, model_folder: str | os.PathLike[str], description: Mapping[str, Any]) -> None:
        """Warn, once, about the stored files of a local model folder that hold this vocabulary encoded otherwise
        (other weights, templates, dtype...): they are not used, and the user should know why."""
        folder = Path(model_folder) / STORED_VOCABULARIES_DIR
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    stored = _parse_description((handle.metadata() or {}).get(_DESCRIPTION_METADATA, ""))
            except (OSError, SafetensorError):
                continue
            if stored is None or stored.get("class_names") != description["class_names"]:
                continue
            if (path, self.vocabulary_key(description)) in self._warned:
                continue
            self._warned.add((path, self.vocabulary_key(description)))
            differences = _description_differences(stored, description)
            logger.warning(
                "The stored vocabulary %s (%d classes) was encoded with other %s than this model's: "
                "it is not used, and the vocabulary is encoded again. Store it again for this model: "
                "model.save_pretrained(folder, vocabularies=[...]) or ita-convert --store-vocabularies",
                path,
                len(description["class_names"]),
                " and ".join(differences) or "settings",
            )

    def store(
        self,
        backbone: ITATextTower,
        model_folder: str | os.PathLike[str],
        class_names: ITAClassNames | Sequence[str],
        with_name_embeddings: bool = False,
        label: str | None = None,
    ) -> Path:
        """Encode `class_names` (or take it from the caches) and store it in `model_folder`
        (`vocabularies/<key>.safetensors`, keyed as the disk cache); returns the file's path."""
        vocabulary = self.encode(backbone, class_names, with_name_embeddings)
        description = self.vocabulary_description(backbone, vocabulary.class_names, with_name_embeddings)
        path = Path(model_folder) / STORED_VOCABULARIES_DIR / f"{self.vocabulary_key(description)}.safetensors"
        tensors = {"text_classifier": vocabulary.text_classifier}
        if vocabulary.name_embeddings is not None:
            tensors["name_embeddings"] = vocabulary.name_embeddings
        self._write_cache_file(path, tensors, vocabulary.class_names, description, label, raise_errors=True)
        return path

    # --------------------------------------------------------------------------------------------- long names
    def _report_long_names(
        self, backbone: ITATextTower, parsed: Sequence[Sequence[str]], class_names: Sequence[str]
    ) -> None:
        """One warning per vocabulary naming the classes whose prompts are longer than the text tower reads: the
        tokens after its context are cut, and the class is encoded from the beginning of its name alone."""
        context = getattr(backbone, "context_length", None)
        if not isinstance(context, int) or tuple(class_names) in self._warned:
            return
        cut: list[str] = []
        for index, class_synonyms in enumerate(parsed):
            for synonym in class_synonyms:
                longest = 0
                kept = ""
                for template in self.templates:
                    prompt = template.format(synonym)
                    if len(prompt.encode("utf-8")) + 2 <= context:  # a token holds at least one byte
                        continue
                    tokens = _bpe_tokenizer().encode(prompt)
                    if len(tokens) + 2 > longest:
                        longest = len(tokens) + 2
                        kept = _bpe_tokenizer().decode(tokens[: context - 2]).strip()
                if longest > context:
                    shown = synonym if len(synonym) <= 40 else f"{synonym[:37]}..."
                    cut.append(
                        f"class {index} ({shown!r}, {len(synonym):,} characters): {longest:,} tokens given, "
                        f"{context} used (read up to {' '.join(kept.split()[-4:])[-40:]!r})"
                    )
        if cut:
            self._warned.add(tuple(class_names))
            listed = "; ".join(cut[:5]) + (f"; and {len(cut) - 5} more" if len(cut) > 5 else "")
            logger.warning(
                "%d class name%s longer than the text tower's context of %d tokens (prompt included): the rest is "
                "cut and plays no part in the classification. %s. Shorten the names or split them into synonyms "
                "('sofa,couch').",
                len(cut),
                "s are" if len(cut) > 1 else " is",
                context,
                listed,
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
        self,
        backbone: ITATextTower,
        class_names: ITAClassNames | Sequence[str],
        with_name_embeddings: bool = False,
        model_folder: str | os.PathLike[str] | None = None,
    ) -> ITAVocabulary:
        """Encode a vocabulary into an `ITAVocabulary`: an `ITAClassNames` (`parse_vocabulary`'s, read as it is) or a
        list of comma-separated synonym strings (parsed here, once). Synonyms shared by two classes are accepted:
        FC-CLIP's own A-847 and PC-459 lists have some.

        Looks in the memory cache, then in `model_folder`'s stored vocabularies (a local model folder, or a Hub
        repository, for large vocabularies), then in the disk cache; encodes with the text tower only when none
        holds it. Class names longer than the text tower's context are reported once per vocabulary."""
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
        self._report_long_names(backbone, parsed, class_names)

        synonyms = [synonym for class_synonyms in parsed for synonym in class_synonyms]
        synonym_to_class = torch.tensor(
            [index for index, class_synonyms in enumerate(parsed) for _ in class_synonyms], dtype=torch.long
        )
        num_candidates = len(synonyms) + len(self.extra_candidates) if with_name_embeddings else None
        large = len(synonyms) * len(self.templates) >= self.disk_cache_min_prompts
        cached = path = None
        # A local model folder with stored vocabularies is worth hashing the text tower for, whatever the size.
        stored = model_folder is not None and (large or (Path(model_folder) / STORED_VOCABULARIES_DIR).is_dir())
        description: dict[str, Any] | None = None
        if stored or large:
            description = self.vocabulary_description(backbone, class_names, with_name_embeddings, weight.dtype)
            file_key = self.vocabulary_key(description)
            if stored:
                assert model_folder is not None
                stored_path = self._stored_file(model_folder, file_key)
                if stored_path is not None:
                    cached = self._read_cache_file(
                        stored_path, len(synonyms), num_candidates, description, "stored vocabulary"
                    )
                    if cached is not None:
                        logger.info("Read the stored vocabulary (%d classes) from %s", len(class_names), stored_path)
                else:
                    self._warn_other_stored(model_folder, description)
            if cached is None and large:
                path = self._disk_cache_path(file_key)
                if path is not None and path.is_file():
                    cached = self._read_cache_file(path, len(synonyms), num_candidates, description)
                    if cached is not None:
                        logger.info("Read the encoded vocabulary (%d classes) from %s", len(class_names), path)
                        path = None  # nothing to write
        if cached is not None:
            text_classifier, name_embeddings = cached
        else:
            text_classifier, name_embeddings = self._encode_uncached(backbone, synonyms, with_name_embeddings)
            if path is not None:
                tensors = {"text_classifier": text_classifier}
                if name_embeddings is not None:
                    tensors["name_embeddings"] = name_embeddings
                self._write_cache_file(path, tensors, list(class_names), description)
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


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer() -> Any:
    """open_clip's BPE tokenizer, to count a prompt's tokens before the context cuts them (the text towers'
    own tokenizers cut at their context)."""
    return open_clip.tokenizer.SimpleTokenizer()


def _parse_description(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _description_differences(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a stored file's description and the wanted one, in words (empty: the same)."""
    if stored is None:
        return ["description (unreadable)"]
    differences = [meaning for field, meaning in _DESCRIPTION_FIELDS.items() if stored.get(field) != wanted.get(field)]
    if stored.get("class_names") != wanted.get("class_names"):
        differences.append("class names")
    return differences
