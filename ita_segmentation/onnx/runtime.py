"""`ITAOnnxModel`: an exported model folder run by onnxruntime, called like `ITAForOpenVocabSegmentation`.

It takes the processor's outputs and `class_names=` or an encoded vocabulary, encodes vocabularies with the
exported text tower (the same templates, synonyms, cache and category bank as the PyTorch model), and returns
`ITAOpenVocabSegmentationOutput`, so `post_process_semantic_segmentation`, the pipeline, `ita-segment` and the
evaluation take it in place of the PyTorch model. Inference only, on the CPU, in float32.
"""

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from configuration_ita import ITAConfig
from modeling_ita.dominant_categories import clip_center_crop
from modeling_ita.modeling import (
    ITAForOpenVocabSegmentation,
    ITAOpenVocabSegmentationOutput,
    _unexpected_arguments_message,
)
from modeling_ita.vocabulary import ITAVocabulary, ITAVocabularyEncoder

from ..backends import BACKENDS, export_folder_suggestion
from .graph import (
    TEXT_ENCODER_INPUT,
    TEXT_ENCODER_OUTPUT,
    segmentation_input_names,
    segmentation_inputs,
    segmentation_output_names,
    truncate_context,
)

__all__ = [
    "MANIFEST_FILE",
    "ITAOnnxModel",
    "ITAOnnxTextEncoder",
    "import_onnx_extra",
    "is_onnx_model_folder",
    "resolve_backend",
    "read_manifest",
]

# Written by the exporter next to the ONNX files: what they are, their inputs and outputs, the export's check.
MANIFEST_FILE = "onnx_export.json"
MANIFEST_FORMAT = "ita-onnx"
MANIFEST_VERSION = 1

INSTALL_HINT = "install the `onnx` extra: pip install 'ita-segmentation[onnx]'"


def import_onnx_extra(*modules, purpose="This"):
    """Import the `onnx` extra's `modules` (e.g. "onnxruntime"); an `ImportError` naming the extra if one is missing."""
    imported = []
    for name in modules:
        try:
            imported.append(__import__(name))
        except ImportError as error:
            raise ImportError(f"{purpose} needs {name}, which is not installed: {INSTALL_HINT}") from error
    return imported[0] if len(imported) == 1 else imported


def is_onnx_model_folder(path):
    """Whether `path` is a local folder written by `ita-export` (it holds `onnx_export.json`)."""
    try:
        return (Path(path) / MANIFEST_FILE).is_file()
    except (TypeError, OSError):
        return False


def resolve_backend(model_name_or_path, backend="auto", device=None, dtype="float32"):
    """`(backend, device)` for a model: `"auto"` is onnxruntime for a folder written by `ita-export`, else pytorch.
    The onnxruntime backend runs on the CPU in float32: its device is `"cpu"` (None and `"auto"` become it);
    another device or dtype raises a `ValueError` naming it, as does an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "onnxruntime" if is_onnx_model_folder(model_name_or_path) else "pytorch"
    if backend != "onnxruntime":
        return backend, device
    if device is not None and device != "auto":
        try:
            device_type = torch.device(device).type
        except (RuntimeError, TypeError):
            raise ValueError(f"{device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
        if device_type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU; got device {device}")
    if dtype not in ("float32", torch.float32):
        raise ValueError(f"the onnxruntime backend computes in float32; got dtype {dtype}")
    return backend, "cpu"


def read_manifest(folder):
    """The exporter's manifest of `folder`; a `ValueError` naming the problem for a folder that is not an export."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder} is not an exported ONNX model folder (no {MANIFEST_FILE}); write one beside it with "
            f"`ita-export --model {folder} --output {export_folder_suggestion(folder)}`"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path} is not an ITA ONNX manifest of version {MANIFEST_VERSION} (format {manifest.get('format')!r}, "
            f"version {manifest.get('format_version')!r}): export the model again with this version"
        )
    for key in ("model_file", "text_encoder_file"):
        if not (Path(folder) / manifest[key]).is_file():
            raise ValueError(f"{folder} lacks {manifest[key]}, listed in its {MANIFEST_FILE}: the export is incomplete")
    return manifest


def _resolve_folder(model_name_or_path, revision=None, cache_dir=None, local_files_only=None):
    """A local folder as it is; anything else is a Hub model id, downloaded (or read from the cache)."""
    path = Path(model_name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{model_name_or_path} is a file, not an exported ONNX model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(model_name_or_path), revision=revision, cache_dir=cache_dir, local_files_only=bool(local_files_only)
            )
        )
    except Exception as error:  # an invalid id, no network, an unknown repository, ...
        raise OSError(
            f"{model_name_or_path} is neither a local folder nor a Hub model that could be downloaded: {error}"
        ) from error


def _session(ort, path, providers, session_options):
    return ort.InferenceSession(os.fspath(path), sess_options=session_options, providers=providers)


class ITAOnnxTextEncoder:
    """The exported CLIP text tower, with the backbone methods `ITAVocabularyEncoder` calls (`tokenize`,
    `encode_text`, `embed_dim`, `weights_fingerprint`), so vocabularies are encoded exactly as the PyTorch model
    encodes them, and kept in the same caches.

    `path` is the exported text tower's file, whose bytes name its weights for the caches (`weights_fingerprint`);
    `fingerprint`, when the export recorded it, is the PyTorch text tower's own (`ITAVocabularyEncoder.
    text_tower_fingerprint`), so that the vocabularies stored with the PyTorch model serve its export too."""

    def __init__(self, session, context_length, embed_dim, path=None, fingerprint=None):
        self.session = session
        self.context_length = context_length
        self.embed_dim = embed_dim
        self.path = None if path is None else Path(path)
        self._fingerprint = fingerprint
        self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        # `ITAVocabularyEncoder` keys its caches by the text projection's dtype (and its memory cache by the
        # device): the embeddings come out on the CPU in float32.
        self.clip_model = SimpleNamespace(text_projection=torch.empty(0))

    def weights_fingerprint(self):
        """A SHA-256 naming the text tower's weights: the one the export recorded (the PyTorch model's), else the
        hash of the exported file's bytes (and of its external data, if any), computed once. Equal for equal
        files wherever they lie."""
        if self._fingerprint is None:
            files = self._weight_files()
            if not files:
                raise ValueError(
                    "This exported text tower has no file to name its weights by (no path given): the vocabulary "
                    "cache cannot tell them; load the model with ITAOnnxModel.from_pretrained(folder)"
                )
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file.name};".encode())
                with open(file, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 24), b""):
                        digest.update(block)
            self._fingerprint = f"onnx-sha256:{digest.hexdigest()}"
        return self._fingerprint

    def _weight_files(self):
        """The exported file and its external-data files (`<name>.data`, or any file its graph names), if any."""
        if self.path is None or not self.path.is_file():
            return []
        files = [self.path]
        files += sorted(p for p in self.path.parent.glob(f"{self.path.name}.*") if p.is_file())
        return files

    def tokenize(self, texts):
        """open_clip BPE tokens `[N, context_length]`."""
        return self._tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, tokens, normalize=False):
        """Text embeddings `[N, D]` of `tokens` `[N, L]`, the context cut after the last end-of-text token."""
        tokens = truncate_context(tokens).to(torch.int64)
        (embeddings,) = self.session.run([TEXT_ENCODER_OUTPUT], {TEXT_ENCODER_INPUT: tokens.numpy()})
        embeddings = torch.from_numpy(embeddings)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings


class ITAOnnxModel:
    """ITA or FC-CLIP exported by `ita-export`, run by onnxruntime with the PyTorch model's call signature.

        Example:

        ```python
        >>> from modeling_ita import ITAProcessor
    from ita_segmentation.onnx import ITAOnnxModel
        >>> model = ITAOnnxModel.from_pretrained("ita-onnx")
        >>> processor = ITAProcessor.from_pretrained("ita-onnx")
        >>> inputs = processor(images=image, text=["sofa,couch", "wall", "floor"], return_tensors="pt")
        >>> outputs = model(**inputs)
        >>> label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
        ```
    """

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")

    def __init__(self, config, segmentation_session, text_session, manifest, name_or_path=None, folder=None):
        self.config = config
        self.manifest = manifest
        self.name_or_path = name_or_path
        self.folder = folder  # the local folder it was read from (its processor files are there too)
        self.segmentation_session = segmentation_session
        self.text_encoder = ITAOnnxTextEncoder(
            text_session,
            manifest["text_context_length"],
            manifest["text_embed_dim"],
            path=None if folder is None else Path(folder) / manifest["text_encoder_file"],
            fingerprint=manifest.get("text_tower_fingerprint"),
        )
        self.vocabulary_encoder = ITAVocabularyEncoder(
            config.prompt_templates,
            config.train_vocabulary,
            extra_candidates=config.dominant_category_extra_names,
            batch_size=config.text_batch_size,
        )
        self.size_multiple = manifest["size_multiple"]
        self.min_size = manifest["min_size"]
        self._input_names = segmentation_input_names(config)
        self._output_names = segmentation_output_names(config)
        graph_inputs = [item.name for item in segmentation_session.get_inputs()]
        if graph_inputs != self._input_names:
            raise ValueError(
                f"{MANIFEST_FILE}'s model takes inputs {graph_inputs}, but its config.json describes a model taking "
                f"{self._input_names}: the folder mixes files of different exports"
            )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path,
        *,
        providers=None,
        session_options=None,
        num_threads=None,
        revision=None,
        cache_dir=None,
        local_files_only=None,
    ):
        """Load a folder written by `ita-export` (or a Hub repository holding one).

        Args:
            providers: onnxruntime execution providers (default `["CPUExecutionProvider"]`).
            session_options: an `onnxruntime.SessionOptions` for both sessions.
            num_threads: threads of each operator (`intra_op_num_threads`); onnxruntime's default (one per
                physical core) when None. Ignored with `session_options`, as are the defaults set here (errors-only
                logging, no spinning of idle threads).
        """
        ort = import_onnx_extra("onnxruntime", purpose="ITAOnnxModel")
        folder = _resolve_folder(model_name_or_path, revision, cache_dir, local_files_only)
        manifest = read_manifest(folder)
        config = ITAConfig.from_pretrained(folder)
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3  # errors only: not the notes of its graph optimiser
            # Idle threads sleep instead of spinning: PyTorch's pre- and post-processing run right after each
            # call, and spinning threads would take their cores (benchmarks/README.md: spinning helps the trunk
            # alone, not the end-to-end time).
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if num_threads is not None:
                session_options.intra_op_num_threads = num_threads
        providers = providers or ["CPUExecutionProvider"]
        segmentation = _session(ort, folder / manifest["model_file"], providers, session_options)
        text = _session(ort, folder / manifest["text_encoder_file"], providers, session_options)
        return cls(config, segmentation, text, manifest, name_or_path=str(model_name_or_path), folder=folder)

    # ------------------------------------------------------------------------------------ the torch model's API
    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32

    def to(self, *args, **kwargs):
        """No-op for the CPU and float32, what the exported graphs run in; anything else is refused."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, (str, torch.device)) and torch.device(value).type != "cpu":
                raise ValueError(f"ITAOnnxModel runs on the CPU through onnxruntime; it cannot move to {value}")
            if isinstance(value, torch.dtype) and value != torch.float32:
                raise ValueError(f"ITAOnnxModel's graphs compute in float32; it cannot run in {value}")
        return self

    def eval(self):
        return self

    def can_generate(self):
        return False

    def encode_vocabulary(self, class_names=None):
        """Encode (or fetch from the caches) a vocabulary with the exported text tower; defaults to the config's
        training vocabulary. The same `ITAVocabulary` as the PyTorch model's `encode_vocabulary`. The vocabularies
        stored in the exported folder (`store_vocabularies`) are looked up first, then the disk cache."""
        class_names = self.config.train_vocabulary if class_names is None else class_names
        return self.vocabulary_encoder.encode(
            self.text_encoder,
            class_names,
            with_name_embeddings=self.config.num_dominant_categories > 0,
            model_folder=self.folder,
        )

    def store_vocabularies(self, vocabularies, save_directory=None):
        """Encode `vocabularies` (a list of vocabularies, each a list of class names, or a dict label -> class
        names) with the exported text tower and store them in `save_directory` (default: the exported folder this
        model was read from) as `vocabularies/<key>.safetensors`, keyed as the disk cache is; returns the paths.
        `ITAOnnxModel.from_pretrained` of that folder then uses them instead of encoding."""
        save_directory = self.folder if save_directory is None else save_directory
        if save_directory is None:
            raise ValueError("Name the folder to store the vocabularies in: store_vocabularies(..., save_directory)")
        labelled: list[tuple[str | None, Any]]
        if isinstance(vocabularies, dict):
            labelled = [(str(label), names) for label, names in vocabularies.items()]
        elif isinstance(vocabularies, str) or any(isinstance(names, str) for names in vocabularies):
            raise ValueError(
                "vocabularies must be a list of vocabularies, each a list of class names (e.g. "
                "[['cat', 'sofa,couch']]) or a dict label -> class names; got a list of strings"
            )
        else:
            labelled = [(None, names) for names in vocabularies]
        with_names = self.config.num_dominant_categories > 0
        return [
            str(self.vocabulary_encoder.store(self.text_encoder, save_directory, names, with_names, label=label))
            for label, names in labelled
        ]

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    @torch.no_grad()
    def forward(
        self,
        pixel_values,
        pixel_mask=None,
        image_sizes=None,
        class_names=None,
        vocabulary=None,
        mask_labels=None,
        class_labels=None,
        dominant_category_ids=None,
        dominant_category_pixel_values=None,
        output_auxiliary_logits=None,
        return_dict=None,
        **kwargs,
    ):
        """`ITAForOpenVocabSegmentation.forward` at inference (see there), through the exported graph.

        Not available here: a loss (`mask_labels`, `class_labels`), precomputed `dominant_category_ids` (the graph
        ranks the candidates itself) and `output_auxiliary_logits`. ITA's CLIP views are made from `pixel_values`
        with the PyTorch model's fallback when `dominant_category_pixel_values` is not given.
        """
        if kwargs:
            raise TypeError(_unexpected_arguments_message(kwargs, self.forward))
        refused = {
            "mask_labels": mask_labels is not None or class_labels is not None,
            "dominant_category_ids": dominant_category_ids is not None,
            "output_auxiliary_logits": bool(output_auxiliary_logits),
        }
        for name, given in refused.items():
            if given:
                raise ValueError(
                    f"ITAOnnxModel runs the exported inference graph, which takes no {name}; use the PyTorch model "
                    "(ITAForOpenVocabSegmentation) for it"
                )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if vocabulary is None:
            vocabulary = self.encode_vocabulary(class_names)
        elif not isinstance(vocabulary, ITAVocabulary):
            raise TypeError(
                f"vocabulary must be an ITAVocabulary from model.encode_vocabulary(), got {type(vocabulary)}"
            )
        image_sizes, feeds = self.graph_feeds(
            pixel_values, pixel_mask, image_sizes, vocabulary, dominant_category_pixel_values
        )
        values = dict(zip(self._output_names, self.segmentation_session.run(self._output_names, feeds)))
        outputs: dict[str, Any] = {name: torch.from_numpy(value) for name, value in values.items()}

        ids = outputs.get("dominant_category_ids")
        dominant_categories = None
        if ids is not None:
            dominant_categories = [[vocabulary.candidate_names[i] for i in row] for row in ids.tolist()]
            vocabulary.warn_missing_from_bank({name for row in dominant_categories for name in row})
        output = ITAOpenVocabSegmentationOutput(
            **outputs, dominant_categories=dominant_categories, image_sizes=image_sizes
        )
        return output if return_dict else output.to_tuple()

    def graph_feeds(
        self, pixel_values, pixel_mask=None, image_sizes=None, vocabulary=None, dominant_category_pixel_values=None
    ):
        """`(image_sizes, feeds)`: the images' sizes and the segmentation graph's inputs (numpy arrays by input name)
        for these arguments of `forward` (`vocabulary` an encoded `ITAVocabulary`)."""
        pixel_values = torch.as_tensor(pixel_values)
        self._check_pixel_values(pixel_values)
        image_sizes = ITAForOpenVocabSegmentation._image_sizes(pixel_values, pixel_mask, image_sizes).cpu()
        views = self._views(pixel_values, image_sizes, dominant_category_pixel_values)
        inputs = segmentation_inputs(self.config, pixel_values.detach().cpu(), image_sizes, vocabulary, views)
        return image_sizes, {name: _numpy(value) for name, value in inputs.items()}

    def _check_pixel_values(self, pixel_values):
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [batch, 3, height, width], got shape {tuple(pixel_values.shape)}")
        height, width = pixel_values.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple or min(height, width) < self.min_size:
            raise ValueError(
                f"The exported graph takes images whose height and width are multiples of {self.size_multiple}, at "
                f"least {self.min_size}; got {height}x{width}. The processor pads to such sizes (size_divisor="
                f"{self.size_multiple})."
            )

    def _views(self, pixel_values, image_sizes, views):
        """ITA's CLIP views `[B, 3, S, S]`: the given ones, checked, or made as the PyTorch model makes them."""
        if "dominant_category_pixel_values" not in self._input_names:
            return None
        size = self.config.dominant_category_image_size
        if views is None:
            return clip_center_crop(pixel_values.float(), image_sizes, size)
        views = torch.as_tensor(views)
        if tuple(views.shape) != (pixel_values.shape[0], 3, size, size):
            raise ValueError(
                f"dominant_category_pixel_values has shape {tuple(views.shape)}; this model ranks on {size}x{size} "
                f"views, one per image of the batch of {pixel_values.shape[0]} (set the processor's "
                "dominant_category_image_size to the config's)"
            )
        return views.detach().cpu()


def _numpy(value):
    """A graph input as onnxruntime takes it: float32 or int64, contiguous."""
    value = value.detach().cpu()
    value = value.to(torch.float32) if value.is_floating_point() else value.to(torch.int64)
    return np.ascontiguousarray(value.numpy())
