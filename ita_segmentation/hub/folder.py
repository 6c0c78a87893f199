"""Hub-ready model folders: the processor configuration, the model card, and pushing a folder to the Hub.

The model's source files for `trust_remote_code` are written by `remote_code.export_remote_code`.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import huggingface_hub
import open_clip
import transformers
import yaml
from huggingface_hub import HfApi

from configuration_ita import CONVNEXT_LARGE_D_320_CLIP_CONFIG, ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAProcessor

from ..errors import ITADataError
from ..evaluation.benchmark_names import PUBLISHED_FC_CLIP_MIOU
from .remote_code import REMOTE_CODE_ENTRY_POINTS, describe_processor_config

__all__ = [
    "CATEGORY_BANK_FILE",
    "CATEGORY_BANK_SNIPPET",
    "HubPushError",
    "card_metadata",
    "prepare_config_for_folder",
    "push_folder_to_hub",
    "render_model_card",
    "save_processor",
    "write_model_card",
]

CATEGORY_BANK_FILE = "category_bank.safetensors"


class ConvertedFolder(Protocol):
    """What the model card reads of a conversion: `conversion.ConversionResult`'s fields (named here, as
    conversion imports this module)."""

    @property
    def config(self) -> ITAConfig: ...
    @property
    def variant(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def source_sha256(self) -> str: ...
    @property
    def num_tensors(self) -> int: ...
    @property
    def num_parameters(self) -> int: ...
    @property
    def dropped_keys(self) -> Sequence[str]: ...
    @property
    def category_bank_size(self) -> int | None: ...
    @property
    def verified(self) -> bool: ...
    @property
    def provenance(self) -> Mapping[str, str]: ...


# Activates an exported category bank; expects `bank_file` (its path) and `model`. Needs only safetensors.
CATEGORY_BANK_SNIPPET = """\
import json
from safetensors import safe_open

with safe_open(bank_file, framework="pt") as bank:
    names = json.loads(bank.metadata()["names"])
    embeddings = bank.get_tensor("embeddings")
model.vocabulary_encoder.set_category_bank(dict(zip(names, embeddings)))
"""

REQUIREMENTS = (
    "torch",
    "torchvision",
    "transformers>=5",
    "open_clip_torch>=3",
    "timm",
    "scipy",
    "safetensors",
    "pillow",
)


def prepare_config_for_folder(config: ITAConfig) -> ITAConfig:
    """Name the model class in the config (`architectures`); the `auto_map` and `custom_pipelines` entries naming
    the exported source files are written with them (`remote_code.describe_folder`)."""
    config.architectures = [REMOTE_CODE_ENTRY_POINTS["AutoModel"].rsplit(".", 1)[1]]
    return config


def save_processor(folder: str | os.PathLike[str], config: ITAConfig) -> ITAProcessor:
    """Write the `ITAProcessor` of a model of `config`, with `auto_map` entries for the source files in `folder`
    (write those first, or call `remote_code.describe_folder` after)."""
    processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(config))
    processor.save_pretrained(folder)
    describe_processor_config(folder)
    return processor


# -------------------------------------------------------------------------------------------------------- push
class HubPushError(ITADataError, RuntimeError):
    """Pushing a converted folder failed; the folder itself is complete (a data error of the doors: exit status 1,
    the message says how to push it later)."""


def push_folder_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it; returns the commit URL.

    Fails at once in offline mode (`HF_HUB_OFFLINE=1`), and with a `HubPushError` on any Hub or network error;
    the message says the folder is written and how to push it later.
    """
    folder = Path(folder)
    later = (
        f"The converted model folder is complete at {folder}; push it later with "
        f"`hf upload {repo_id} {folder} .` (or `HfApi().upload_folder(repo_id={repo_id!r}, folder_path={str(folder)!r})`)."
    )
    if huggingface_hub.constants.is_offline_mode():
        raise HubPushError(f"Not pushed to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1). {later}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message or "Add a model converted from an original checkpoint",
        )
    except Exception as error:  # network, authentication and Hub errors alike: the folder stays usable
        raise HubPushError(f"Not pushed to {repo_id}: {type(error).__name__}: {error}. {later}") from error
    return commit.commit_url


# -------------------------------------------------------------------------------------------------- model card
_PROTOCOL = """\
| benchmark | classes | val images |
|---|---|---|
| ADE20K (A-150) | 150 | 2,000 |
| ADE20K-full (A-847) | 847 | 2,000 |
| Pascal Context (PC-59) | 59 | 5,104 |
| Pascal Context full (PC-459) | 459 | 5,104 |
| Pascal VOC (PAS-20, background ignored) | 20 | 1,449 |
| Pascal VOC (PAS-21, background scored) | 21 | 1,449 |

The protocol of the FC-CLIP and ITA papers: trained on COCO panoptic (133 classes) only, every benchmark is
zero-shot. Single scale: shortest side 800, longest at most 1333, padded to a multiple of 32, no flip, no
sliding window. Classes are FC-CLIP's lists with hand-made synonyms (comma-separated in one class name; the
best synonym wins). mIoU from one confusion matrix over the split, averaged over the classes present in the
ground truth, as detectron2's `SemSegEvaluator`.
"""

# The benchmarks of the card's model-index: (benchmark key, display name, classes).
_BENCHMARKS = (
    ("ade847", "ADE20K-full (A-847)", "ade20k-full"),
    ("pc459", "Pascal Context full (PC-459)", "pascal-context-459"),
    ("ade150", "ADE20K (A-150)", "ade20k"),
    ("pc59", "Pascal Context (PC-59)", "pascal-context-59"),
    ("pas20", "Pascal VOC (PAS-20)", "pascal-voc-20"),
    ("pas21", "Pascal VOC (PAS-21)", "pascal-voc-21"),
)
FC_CLIP_PAPER = "https://arxiv.org/abs/2308.02487"
# The OpenCLIP checkpoint whose CLIP the original models freeze (the original ITA README's vision-language model).
BASE_MODEL = "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
# Hub dataset id of the training data: the original models are trained on COCO panoptic (2017) only.
TRAINING_DATASETS = ("coco",)
PIPELINE_TAG = "zero-shot-image-segmentation"  # the task whose pipeline the folder carries (custom_pipelines)
# The original code's licence is not stated in the ITA README; FC-CLIP's code is Apache-2.0, as this port is.
LICENSE = "apache-2.0"

_FCCLIP_PUBLISHED = (
    "For reference, the FC-CLIP authors report for their released ConvNeXt-L model (`fcclip_cocopan.pth`), in mIoU: "
    + ", ".join(f"{name.split('(')[-1].rstrip(')')} {PUBLISHED_FC_CLIP_MIOU[key]}" for key, name, _ in _BENCHMARKS)
    + ". They are the numbers to reproduce if\nthis folder was converted from that release; they were not measured on "
    "this folder (the model-index above says so too).\n"
)


def card_metadata(result: ConvertedFolder) -> dict[str, object]:
    """The model card's YAML front matter: what the Hub reads to list, filter and load the model."""
    config, variant = result.config, result.variant
    standard_clip = config.clip_config == CONVNEXT_LARGE_D_320_CLIP_CONFIG
    metadata: dict[str, object] = {
        "library_name": "transformers",
        "pipeline_tag": PIPELINE_TAG,
        "license": LICENSE,
        "tags": ["open-vocabulary-segmentation", "semantic-segmentation", variant, "clip", "custom_code"],
        "datasets": list(TRAINING_DATASETS),
    }
    if standard_clip:
        metadata["base_model"] = BASE_MODEL
    if variant == "fcclip" and standard_clip:
        metadata["model-index"] = [
            {
                "name": "FC-CLIP ConvNeXt-L (fcclip_cocopan.pth), as reported by the FC-CLIP authors",
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Zero-shot semantic segmentation"},
                        "dataset": {"name": name, "type": dataset_type, "split": "validation"},
                        "metrics": [
                            {
                                "type": "mean_iou",
                                "value": PUBLISHED_FC_CLIP_MIOU[key],
                                "name": "mIoU (reported by the original authors, not measured on this folder)",
                                "verified": False,
                            }
                        ],
                        "source": {"name": "FC-CLIP paper, Table 1", "url": FC_CLIP_PAPER},
                    }
                    for key, name, dataset_type in _BENCHMARKS
                ],
            }
        ]
    return metadata


def _clip_name(config: ITAConfig) -> str:
    return (
        "OpenCLIP ConvNeXt-L (`convnext_large_d_320`)"
        if config.clip_config == CONVNEXT_LARGE_D_320_CLIP_CONFIG
        else (
            f"OpenCLIP with a timm `{config.clip_config['vision_cfg']['timm_model_name']}` image tower (custom config)"
        )
    )


def _category_bank_section(result: ConvertedFolder, where: str) -> list[str]:
    bank_intro = (
        f"`{CATEGORY_BANK_FILE}` holds the original ITA's fixed name embeddings ({result.category_bank_size} names, "
        "`Category/category_tensor.pt`)."
        if result.category_bank_size
        else "This folder has no category bank. The original ITA looks dominant-category names up in a fixed bank "
        "(`Category/category_tensor.pt`); convert with `--category-bank` to include it."
    )
    bank_imports, bank_body = CATEGORY_BANK_SNIPPET.rstrip("\n").split("\n\n", 1)
    return [
        "## Category bank",
        "",
        bank_intro + " By default the model computes the text-query embeddings with the CLIP text tower, so any "
        "vocabulary works. The bank is not switched on when loading. With it, the model does what the original "
        "does: CLIP still ranks the names with its text tower, and the bank gives the embeddings of the chosen "
        "names; a chosen name the bank lacks takes its text-tower embedding, with a warning naming it (the "
        "original raises a `KeyError`). Switch it on for parity with the original:",
        "",
        "```python",
        bank_imports,
        "",
        f'bank_file = "{where}/{CATEGORY_BANK_FILE}"  # or huggingface_hub.hf_hub_download(repo_id, "{CATEGORY_BANK_FILE}")',
        bank_body,
        "```",
        "",
        "`model.vocabulary_encoder.set_category_bank(None)` switches back to the text tower.",
        "",
    ]


def render_model_card(result: ConvertedFolder, repo_id: str | None = None) -> str:
    """The README.md of a converted folder, from a `ConversionResult`."""
    config, variant = result.config, result.variant
    name = "ITA" if variant == "ita" else "FC-CLIP"
    where = repo_id or "path/to/this/folder"
    if variant == "ita":
        what = (
            "**ITA** (*Image-Text Aggregation for Open-Vocabulary Semantic Segmentation*, Cheng et al., IEEE TCSVT "
            "2025): FC-CLIP with dominant-category text queries. Per image, the frozen CLIP ranks the vocabulary "
            f"zero-shot; the {config.num_dominant_categories} best names' text embeddings, projected to the "
            "decoder's width, join the learnable queries, and the decoder runs without self-attention."
        )
    else:
        what = (
            "**FC-CLIP** (*Convolutions Die Hard: Open-Vocabulary Segmentation with Single Frozen Convolutional "
            "CLIP*, Yu et al., NeurIPS 2023): a frozen CLIP feeds a Mask2Former pixel decoder and masked-attention "
            "decoder; masks are classified by text embeddings and by CLIP itself, combined by a geometric ensemble."
        )
    lines = [
        "---",
        yaml.safe_dump(card_metadata(result), sort_keys=False, allow_unicode=True).rstrip("\n"),
        "---",
        "",
        f"# {name} for open-vocabulary semantic segmentation",
        "",
        f"{what} Give it an image and any list of class names; it labels every pixel with one of them.",
        "",
        "This folder holds weights converted from an original detectron2 checkpoint for "
        "`ITAForOpenVocabSegmentation` of the ita-segmentation package (one class for ITA and FC-CLIP).",
        "",
        "## Variant",
        "",
        "| | |",
        "|---|---|",
        f"| model | {name} |",
        f"| CLIP (frozen) | {_clip_name(config)} |",
        f"| dominant-category text queries | {config.num_dominant_categories} |",
        f"| learnable queries | {config.num_queries} |",
        f"| decoder | {config.decoder_layers} layers, self-attention {'on' if config.decoder_self_attention else 'off'} |",
        f"| parameters | {result.num_parameters:,} in {result.num_tensors} tensors |",
        "",
        "## Source",
        "",
        f"- Converted from `{result.source}` (sha256 `{result.source_sha256}`) with `scripts/convert_checkpoint.py`.",
        "- Every original tensor was renamed to its place in this model (`backbone.add_tgt_em.weight` -> "
        "`dominant_categories.projection`, `sem_seg_head.pixel_decoder.*` -> `pixel_decoder.*`, "
        "`sem_seg_head.predictor.*` -> `decoder.*`, CLIP unchanged); values are untouched.",
        "- Not converted, on purpose: "
        + (", ".join(f"`{key}`" for key in result.dropped_keys) or "nothing")
        + " (the loss's class weights, rebuilt from the config).",
        "- Sizes in `config.json` were read from the tensor shapes. Values the shapes do not determine, and where "
        "they came from:",
        *[f"  - `{name}`: {source}" for name, source in sorted(result.provenance.items()) if source != "tensor shapes"],
        "",
        "## How to load",
        "",
        "Without the package, with the source files in this folder (`trust_remote_code=True`; needs "
        + ", ".join(f"`{requirement}`" for requirement in REQUIREMENTS)
        + "):",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{where}", trust_remote_code=True).eval()',
        f'processor = AutoProcessor.from_pretrained("{where}", trust_remote_code=True)',
        "",
        'image = Image.open("photo.jpg").convert("RGB")',
        'inputs = processor(images=image, text=["sofa,couch", "wall", "floor", "lamp"], return_tensors="pt")',
        "with torch.no_grad():",
        "    outputs = model(**inputs)",
        "label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]",
        "```",
        "",
        f"Or the `{PIPELINE_TAG}` pipeline, which this folder carries (`custom_pipelines` in `config.json`):",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'segmenter = pipeline("{PIPELINE_TAG}", model="{where}", trust_remote_code=True)',
        'result = segmenter("photo.jpg", candidate_labels=["sofa,couch", "wall", "floor", "lamp"])',
        'label_map, segments = result["label_map"], result["segments"]  # class id per pixel; label, share, mask',
        "```",
        "",
        "With the ita-segmentation package installed, `import modeling_ita` registers ITA with the Auto classes and "
        "the pipeline task, and the same calls then run the package's code without `trust_remote_code`.",
        "",
        "A class is one string of comma-separated synonyms. The vocabulary is chosen per call and cached.",
        "",
    ]
    if variant == "ita":
        lines += _category_bank_section(result, where)
    lines += [
        "## Evaluation protocol",
        "",
        _PROTOCOL.rstrip("\n"),
        "",
        "## What was verified",
        "",
        "- The conversion is strict: it stops if any original tensor has no place in this model, any model tensor "
        "is left unfilled, or any shape differs.",
    ]
    if result.verified:
        lines.append(
            "- The folder was reloaded with `from_pretrained` and every tensor compared equal to the checkpoint's."
        )
    lines += [
        "- The exported source files are the package's own, with its imports made relative; the package's tests "
        "check, on small models, that they load without the package and give the package's outputs.",
        "- Not verified by the conversion: segmentation accuracy. No benchmark was run on these weights.",
    ]
    if variant == "fcclip":
        lines += ["", _FCCLIP_PUBLISHED.rstrip("\n")]
    else:
        lines += ["", "The ITA authors released no weights and we have no paper numbers to compare with."]
    lines += [
        "",
        "Converted with transformers "
        f"{transformers.__version__}, open_clip {open_clip.__version__}. The source files are Apache-2.0 (the "
        "licence in the front matter); the weights keep the licence of the checkpoint they came from (the original "
        "authors' release), check it before redistributing them.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike[str], result: ConvertedFolder, repo_id: str | None = None) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(result, repo_id=repo_id), encoding="utf-8")
    return path
