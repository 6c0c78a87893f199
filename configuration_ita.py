"""Configuration of ITA (Image-Text Aggregation for open-vocabulary semantic segmentation).

One configuration class describes both ITA and FC-CLIP, its parent model: they differ only in
the number of dominant-category text queries, the number of learnable queries and whether the
masked-attention decoder keeps its self-attention sub-layers.
"""

import copy
import dataclasses
import difflib
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from transformers import PreTrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["ITAConfig", "CONVNEXT_LARGE_D_320_CLIP_CONFIG", "VILD_PROMPT_TEMPLATES", "COCO_PANOPTIC_VOCABULARY"]

# open_clip's `model_configs/convnext_large_d_320.json` (the CLIP of FC-CLIP and ITA). Kept as a dict so
# that building the model never needs the network or a model name.
CONVNEXT_LARGE_D_320_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 768,
    "vision_cfg": {
        "timm_model_name": "convnext_large",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "timm_drop": 0.0,
        "timm_drop_path": 0.1,
        "image_size": 320,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 16},
}

# What CLIP ranks the vocabulary with for dominant-category unearthing: the original second image forward, or
# the dense features of the main forward (a speed option; see `ITAConfig.dominant_category_features`).
DOMINANT_CATEGORY_FEATURES = ("clip_image", "dense_features")

# The 14 ViLD prompt templates used by FC-CLIP (fcclip/fcclip.py, VILD_PROMPT).
VILD_PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# COCO panoptic's 133 classes with FC-CLIP's synonyms (fcclip/data/datasets/coco_panoptic_with_prompt_eng.txt):
# the training vocabulary of the released models.
COCO_PANOPTIC_VOCABULARY = (
    "person,child,girl,boy,woman,man,people,children,girls,boys,women,men,lady,guy,ladies,guys,clothes",
    "bicycle,bicycles,bike,bikes",
    "car,cars",
    "motorcycle,motorcycles",
    "airplane,airplanes",
    "bus,buses",
    "train,trains,locomotive,locomotives,freight train",
    "truck,trucks",
    "boat,boats",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench,benches",
    "bird,birds",
    "cat,cats,kitties,kitty",
    "dog,dogs,puppy,puppies",
    "horse,horses,foal",
    "sheep",
    "cow,cows,calf",
    "elephant,elephants",
    "bear,bears",
    "zebra,zebras",
    "giraffe,giraffes",
    "backpack,backpacks",
    "umbrella,umbrellas",
    "handbag,handbags",
    "tie",
    "suitcase,suitcases",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite,kites",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle,bottles,water bottle",
    "wine glass,wine glasses,wineglass",
    "cup,cups,water cup,water glass",
    "fork,forks",
    "knife,knives",
    "spoon,spoons",
    "bowl,bowls",
    "banana,bananas",
    "apple,apples,apple fruit",
    "sandwich,sandwiches",
    "orange fruit",
    "broccoli",
    "carrot,carrots",
    "hot dog",
    "pizza",
    "donut,donuts",
    "cake,cakes",
    "chair,chairs",
    "couch,sofa,sofas",
    "potted plant,potted plants,pottedplant,pottedplants,planter,planters",
    "bed,beds",
    "dining table,dining tables,diningtable,diningtables,plate,plates,diningtable tablecloth",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "tv remote,remote control",
    "keyboard",
    "cell phone,mobile",
    "microwave",
    "oven,ovens",
    "toaster",
    "sink,sinks",
    "refrigerator,fridge",
    "book,books",
    "clock",
    "vase,vases",
    "scissor,scissors",
    "teddy bear,teddy bears",
    "hair drier",
    "toothbrush,toothbrushes",
    "banner,banners",
    "blanket,blankets",
    "bridge",
    "cardboard",
    "counter",
    "curtain,curtains",
    "door,doors",
    "wood floor",
    "flower,flowers",
    "fruit,fruits",
    "gravel",
    "house",
    "lamp,bulb,lamps,bulbs",
    "mirror",
    "tennis net",
    "pillow,pillows",
    "platform",
    "playingfield,tennis court,baseball field,soccer field,tennis field",
    "railroad",
    "river",
    "road",
    "roof",
    "sand",
    "sea,sea wave,wave,waves",
    "shelf",
    "snow",
    "stairs",
    "tent",
    "towel",
    "brick wall",
    "stone wall",
    "tile wall",
    "wood wall",
    "water",
    "window blind",
    "window",
    "tree,trees,palm tree,bushes",
    "fence,fences",
    "ceiling",
    "sky,clouds",
    "cabinet,cabinets",
    "table",
    "floor,flooring,tile floor",
    "pavement",
    "mountain,mountains",
    "grass",
    "dirt",
    "paper",
    "food",
    "building,buildings",
    "rock",
    "wall,walls",
    "rug",
)


# Keys that transformers itself writes into config.json or passes to a config's constructor. Any other key
# ITAConfig does not take is most likely misspelt, and transformers would keep it silently as an attribute that
# nothing reads, so ITAConfig names it in a warning.
_TRANSFORMERS_CONFIG_KEYS = frozenset(field.name for field in dataclasses.fields(PreTrainedConfig)) | {
    "model_type",
    "auto_map",
    "custom_pipelines",
    "torch_dtype",
    "num_labels",
    "name_or_path",
    "attn_implementation",
    "experts_implementation",
    "output_attentions",
    "use_cache",  # the Trainer sets it on every model it trains
}


def _drop_pipelines_served_here(kwargs: dict[str, Any]) -> None:
    """Drop the `custom_pipelines` entries (a saved folder's pipeline, for `trust_remote_code`) whose task this
    process already serves with a registered pipeline of the same class (`import modeling_ita` registers it).
    transformers' `pipeline()` reads `custom_pipelines` before its task registry and then demands
    `trust_remote_code=True`; without the entry the registered pipeline runs, as it did before folders carried one."""
    custom = kwargs.get("custom_pipelines")
    pipelines = sys.modules.get("transformers.pipelines")  # not imported: no pipeline is registered
    if not isinstance(custom, dict) or pipelines is None:
        return
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks
    kwargs["custom_pipelines"] = {
        task: entry
        for task, entry in custom.items()
        if task not in registered or registered[task]["impl"].__name__ != str(entry.get("impl", "")).rsplit(".", 1)[-1]
    }
    if not kwargs["custom_pipelines"]:
        del kwargs["custom_pipelines"]


def _string_list(value: Any) -> Any:
    """A list of a sequence's items (a tuple, a list); anything else (a single string, a number) as it is, for
    `ITAConfig._validate_types` to name (`list("a photo of {}")` would split it into characters)."""
    return list(value) if isinstance(value, (list, tuple)) else value


# The integer fields that must be at least 1 (the others: `num_dominant_categories` and
# `pixel_decoder_encoder_layers` may be 0, `num_feature_levels` is 3).
_POSITIVE_INT_FIELDS = (
    "num_queries",
    "hidden_dim",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_dim",
    "pixel_decoder_dim",
    "mask_dim",
    "pixel_decoder_attention_heads",
    "pixel_decoder_num_points",
    "pixel_decoder_ffn_dim",
    "group_norm_groups",
    "train_num_points",
    "text_batch_size",
    "dominant_category_image_size",
)

# The type of each ITAConfig field that config.json gives (`list` is a list of strings; `float` takes an int).
_FIELD_TYPES: dict[str, type] = {
    "clip_config": dict,
    "dominant_category_features": str,
    "dominant_category_extra_names": list,
    "prompt_templates": list,
    "train_vocabulary": list,
    **{field: int for field in (*_POSITIVE_INT_FIELDS, "num_dominant_categories", "num_feature_levels")},
    "pixel_decoder_encoder_layers": int,
    **{
        field: float
        for field in (
            "decoder_dropout",
            "pixel_decoder_dropout",
            "logit_scale_init",
            "logit_scale_max",
            "ensemble_alpha",
            "ensemble_beta",
            "class_weight",
            "mask_weight",
            "dice_weight",
            "no_object_weight",
            "oversample_ratio",
            "importance_sample_ratio",
            "init_std",
        )
    },
    **{field: bool for field in ("decoder_self_attention", "ensemble_on_valid_mask", "deep_supervision")},
}
_TYPE_NAMES = {
    bool: "true or false (a JSON boolean)",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    dict: "a JSON object (a dict)",
    list: "a list of strings",
}


class ITAConfig(PreTrainedConfig):  # type: ignore[no-untyped-call]  # PreTrainedConfig's __init_subclass__
    r"""
    Configuration of [`ITAForOpenVocabSegmentation`]. The defaults build ITA with the frozen OpenCLIP
    ConvNeXt-L (`convnext_large_d_320`) of the paper; `ITAConfig.fcclip()` gives FC-CLIP.

    Args:
        clip_config (`dict`, *optional*):
            open_clip model configuration (`embed_dim`, `vision_cfg`, `text_cfg`), as in open_clip's
            `model_configs/*.json`. The vision tower must be a timm ConvNeXt trunk. Defaults to
            `convnext_large_d_320`.
        num_queries (`int`, *optional*, defaults to 180):
            Learnable object queries (180 for ITA, 250 for FC-CLIP).
        num_dominant_categories (`int`, *optional*, defaults to 20):
            Top-k vocabulary names whose text embeddings become text queries (dominant-category
            unearthing); 0 turns it off (FC-CLIP).
        dominant_category_extra_names (`list[str]`, *optional*, defaults to `["other"]`):
            Names added to the vocabulary's synonyms as candidates when ranking dominant categories.
        dominant_category_image_size (`int`, *optional*, defaults to 320):
            Side of the view CLIP ranks the vocabulary on (the CLIP's own image size). The processor makes it as
            open_clip's eval transform does, with PIL on the 8-bit image: shortest side resized to this size
            (bicubic), centre crop. The original applies open_clip's training transform there instead (a random
            crop of 90-100% of the image), so its ranking varies from call to call; this view is deterministic.
        dominant_category_features (`str`, *optional*, defaults to `"clip_image"`):
            What CLIP ranks the vocabulary with for dominant-category unearthing. `"clip_image"` (the original):
            a second, full CLIP image forward on each image's `dominant_category_image_size` view.
            `"dense_features"`: no second forward; the stride-32 CLIP features of the main forward
            (`clip_vis_dense`) are averaged over each image's region and passed through CLIP's own pooling
            head (norm, projection), as CLIP pools its image features. It saves a ConvNeXt-L forward at 320 px
            per image (its cost: the DCU column of `benchmarks/README.md`'s inference table), but it
            changes the ranking input (the whole image at the test resolution instead of a 320-px centre
            crop), so the chosen categories, and with them every prediction, can differ from the original's.
            A speed option, off by default.
        decoder_self_attention (`bool`, *optional*, defaults to `False`):
            Whether each decoder layer has a self-attention sub-layer (FC-CLIP) or not (ITA).
        hidden_dim (`int`, *optional*, defaults to 256):
            Width of the decoder queries.
        decoder_layers (`int`, *optional*, defaults to 9):
            Masked-attention decoder layers (Mask2Former's `DEC_LAYERS` minus one).
        decoder_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the decoder's attention layers.
        decoder_ffn_dim (`int`, *optional*, defaults to 2048):
            Hidden size of the decoder's feed-forward layers.
        decoder_dropout (`float`, *optional*, defaults to 0.0):
            Dropout in the decoder.
        num_feature_levels (`int`, *optional*, defaults to 3):
            Feature levels (strides 32, 16, 8) used by the pixel decoder's encoder and the decoder.
        pixel_decoder_dim (`int`, *optional*, defaults to 256):
            Channels of the pixel decoder (`CONVS_DIM`).
        mask_dim (`int`, *optional*, defaults to 256):
            Channels of the stride-4 mask features.
        pixel_decoder_encoder_layers (`int`, *optional*, defaults to 6):
            Deformable-attention encoder layers.
        pixel_decoder_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the deformable attention.
        pixel_decoder_num_points (`int`, *optional*, defaults to 4):
            Sampling points per head and level of the deformable attention.
        pixel_decoder_ffn_dim (`int`, *optional*, defaults to 1024):
            Hidden size of the encoder's feed-forward layers.
        pixel_decoder_dropout (`float`, *optional*, defaults to 0.0):
            Dropout in the pixel decoder's encoder.
        group_norm_groups (`int`, *optional*, defaults to 32):
            Groups of the pixel decoder's GroupNorm layers.
        prompt_templates (`list[str]`, *optional*):
            Prompt templates, each with one `{}`; defaults to the 14 ViLD templates.
        train_vocabulary (`list[str]`, *optional*):
            Training classes, each a string of comma-separated synonyms; defaults to COCO panoptic's
            133 classes. Also decides the category-overlapping mask of the geometric ensemble.
        logit_scale_init (`float`, *optional*, defaults to log(1/0.07)):
            Initial value of the in-vocabulary classifier's learnable log temperature.
        logit_scale_max (`float`, *optional*, defaults to 100.0):
            Upper clamp of the exponentiated logit scale.
        ensemble_alpha (`float`, *optional*, defaults to 0.4):
            Weight of the out-of-vocabulary (CLIP) probabilities for classes seen in training.
        ensemble_beta (`float`, *optional*, defaults to 0.8):
            Weight of the out-of-vocabulary probabilities for unseen classes.
        ensemble_on_valid_mask (`bool`, *optional*, defaults to `False`):
            Use the CLIP probabilities only for queries whose mask covers at least one CLIP-feature pixel.
        class_weight (`float`, *optional*, defaults to 2.0):
            Weight of the classification loss and matching cost.
        mask_weight (`float`, *optional*, defaults to 5.0):
            Weight of the sigmoid binary cross-entropy mask loss and matching cost.
        dice_weight (`float`, *optional*, defaults to 5.0):
            Weight of the dice loss and matching cost.
        no_object_weight (`float`, *optional*, defaults to 0.1):
            Cross-entropy weight of the void class.
        train_num_points (`int`, *optional*, defaults to 12544):
            Points sampled per mask for matching and for the mask losses.
        oversample_ratio (`float`, *optional*, defaults to 3.0):
            Oversampling of candidate points for uncertainty-based point selection.
        importance_sample_ratio (`float`, *optional*, defaults to 0.75):
            Share of points chosen by uncertainty rather than uniformly.
        deep_supervision (`bool`, *optional*, defaults to `True`):
            Apply the loss to every intermediate decoder prediction.
        text_batch_size (`int`, *optional*, defaults to 256):
            Prompts encoded per text-encoder forward; bounds memory for large vocabularies.
        init_std (`float`, *optional*, defaults to 0.02):
            Unused by the original initialisation scheme; kept for transformers compatibility.
    """

    model_type = "ita"
    # Output fields the Trainer leaves out of its evaluation predictions (`Trainer.prediction_step` reads this):
    # strings, dicts and per-layer lists it cannot gather, and tensors no segmentation metric needs. What stays, in
    # this order: `class_queries_logits`, `masks_queries_logits` (Mask2Former's first two), `ensemble_log_probs`
    # and `image_sizes`, what `post_process_semantic_segmentation` reads.
    keys_to_ignore_at_inference = [
        "out_vocabulary_logits",  # already inside ensemble_log_probs
        "dominant_category_ids",
        "dominant_categories",
        "auxiliary_logits",
        "loss_dict",
        "encoder_last_hidden_state",
        "pixel_decoder_last_hidden_state",
        "transformer_decoder_last_hidden_state",
        "encoder_hidden_states",
        "pixel_decoder_hidden_states",
        "transformer_decoder_hidden_states",
        "attentions",
    ]
    # transformers' generic names, as Mask2Former maps them (plus the decoder's heads).
    attribute_map = {
        "hidden_size": "hidden_dim",
        "num_hidden_layers": "decoder_layers",
        "num_attention_heads": "decoder_attention_heads",
    }

    def __init__(
        self,
        clip_config: dict[str, Any] | None = None,
        num_queries: int = 180,
        num_dominant_categories: int = 20,
        dominant_category_extra_names: Sequence[str] = ("other",),
        dominant_category_image_size: int = 320,
        dominant_category_features: str = "clip_image",
        decoder_self_attention: bool = False,
        hidden_dim: int = 256,
        decoder_layers: int = 9,
        decoder_attention_heads: int = 8,
        decoder_ffn_dim: int = 2048,
        decoder_dropout: float = 0.0,
        num_feature_levels: int = 3,
        pixel_decoder_dim: int = 256,
        mask_dim: int = 256,
        pixel_decoder_encoder_layers: int = 6,
        pixel_decoder_attention_heads: int = 8,
        pixel_decoder_num_points: int = 4,
        pixel_decoder_ffn_dim: int = 1024,
        pixel_decoder_dropout: float = 0.0,
        group_norm_groups: int = 32,
        prompt_templates: Sequence[str] | None = None,
        train_vocabulary: Sequence[str] | None = None,
        logit_scale_init: float = math.log(1 / 0.07),
        logit_scale_max: float = 100.0,
        ensemble_alpha: float = 0.4,
        ensemble_beta: float = 0.8,
        ensemble_on_valid_mask: bool = False,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        train_num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        text_batch_size: int = 256,
        init_std: float = 0.02,
        **kwargs: Any,
    ) -> None:
        other_type = kwargs.get("model_type")
        if other_type not in (None, self.model_type):  # from_pretrained of another model's folder (BERT's)
            raise ValueError(
                f"ITAConfig.model_type: this config.json holds a {other_type!r} model, not ITA/FC-CLIP (model_type "
                f"{self.model_type!r}); give the folder or Hub id of an ITA model"
            )
        self.clip_config = copy.deepcopy(clip_config if clip_config is not None else CONVNEXT_LARGE_D_320_CLIP_CONFIG)
        self.num_queries = num_queries
        self.num_dominant_categories = num_dominant_categories
        self.dominant_category_extra_names = _string_list(dominant_category_extra_names)
        self.dominant_category_image_size = dominant_category_image_size
        self.dominant_category_features = dominant_category_features
        self.decoder_self_attention = decoder_self_attention
        self.hidden_dim = hidden_dim
        self.decoder_layers = decoder_layers
        self.decoder_attention_heads = decoder_attention_heads
        self.decoder_ffn_dim = decoder_ffn_dim
        self.decoder_dropout = decoder_dropout
        self.num_feature_levels = num_feature_levels
        self.pixel_decoder_dim = pixel_decoder_dim
        self.mask_dim = mask_dim
        self.pixel_decoder_encoder_layers = pixel_decoder_encoder_layers
        self.pixel_decoder_attention_heads = pixel_decoder_attention_heads
        self.pixel_decoder_num_points = pixel_decoder_num_points
        self.pixel_decoder_ffn_dim = pixel_decoder_ffn_dim
        self.pixel_decoder_dropout = pixel_decoder_dropout
        self.group_norm_groups = group_norm_groups
        self.prompt_templates = _string_list(
            prompt_templates if prompt_templates is not None else VILD_PROMPT_TEMPLATES
        )
        self.train_vocabulary = _string_list(
            train_vocabulary if train_vocabulary is not None else COCO_PANOPTIC_VOCABULARY
        )
        self.logit_scale_init = logit_scale_init
        self.logit_scale_max = logit_scale_max
        self.ensemble_alpha = ensemble_alpha
        self.ensemble_beta = ensemble_beta
        self.ensemble_on_valid_mask = ensemble_on_valid_mask
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.text_batch_size = text_batch_size
        self.init_std = init_std
        _drop_pipelines_served_here(kwargs)
        self._warn_about_unknown_keys(kwargs)
        super().__init__(**kwargs)
        self.validate_ita()

    @classmethod
    def _warn_about_unknown_keys(cls, kwargs: dict[str, Any]) -> None:
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(
            key
            for key in kwargs
            if key not in known and key not in _TRANSFORMERS_CONFIG_KEYS and not key.startswith("_")
        )
        if not unknown:
            return
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        logger.warning(
            f"ITAConfig does not know the key(s) {', '.join(hints)}: the model ignores them. Check the spelling "
            "against ITAConfig's documented arguments."
        )

    @classmethod
    def fcclip(cls, **kwargs: Any) -> "ITAConfig":
        """FC-CLIP: no text queries, 250 learnable queries, decoder with self-attention."""
        kwargs.setdefault("num_dominant_categories", 0)
        kwargs.setdefault("num_queries", 250)
        kwargs.setdefault("decoder_self_attention", True)
        return cls(**kwargs)

    @property
    def total_queries(self) -> int:
        """Queries the decoder runs: dominant-category text queries first, then the learnable ones."""
        return self.num_dominant_categories + self.num_queries

    @property
    def clip_embed_dim(self) -> int:
        embed_dim: int = self.clip_config["embed_dim"]
        return embed_dim

    def _validate_types(self, fail: Callable[[str, str], NoReturn]) -> None:
        """Each field's type (`_FIELD_TYPES`), before any value is compared: a config.json value of the wrong
        type (`"ensemble_alpha": "high"`) is named with its field, its value and the type it needs."""
        for field, kind in _FIELD_TYPES.items():
            value = getattr(self, field)
            if kind is bool:
                valid = isinstance(value, bool)
            elif kind is int:
                valid = isinstance(value, int) and not isinstance(value, bool)
            elif kind is float:
                valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif kind is str:
                valid = isinstance(value, str)
            elif kind is dict:
                valid = isinstance(value, dict)
            else:  # a list of strings
                valid = isinstance(value, list) and all(isinstance(item, str) for item in value)
            if not valid:
                fail(
                    field,
                    f"must be {_TYPE_NAMES[kind]}, got {value!r} ({type(value).__name__}); fix it in config.json "
                    f"or where the config is made",
                )

    def validate_ita(self) -> None:
        """Raise a `ValueError` naming the field of any invalid value or combination."""

        def fail(field: str, message: str) -> NoReturn:
            raise ValueError(f"ITAConfig.{field}: {message}")

        self._validate_types(fail)
        clip = self.clip_config
        if not isinstance(clip, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(clip):
            fail("clip_config", "must be an open_clip config dict with 'embed_dim', 'vision_cfg' and 'text_cfg'")
        timm_name = clip["vision_cfg"].get("timm_model_name")
        if not timm_name or "convnext" not in timm_name:
            fail("clip_config", f"the vision tower must be a timm ConvNeXt trunk, got timm_model_name={timm_name!r}")
        for field in _POSITIVE_INT_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.dominant_category_features not in DOMINANT_CATEGORY_FEATURES:
            fail(
                "dominant_category_features",
                f"must be one of {list(DOMINANT_CATEGORY_FEATURES)}, got {self.dominant_category_features!r}",
            )
        if not isinstance(self.num_dominant_categories, int) or self.num_dominant_categories < 0:
            fail("num_dominant_categories", f"must be an integer >= 0, got {self.num_dominant_categories!r}")
        if self.pixel_decoder_encoder_layers < 0:
            fail("pixel_decoder_encoder_layers", "must be >= 0")
        if self.num_feature_levels != 3:
            fail("num_feature_levels", "only 3 levels (strides 32, 16, 8) are supported, as in the original")
        if self.hidden_dim % self.decoder_attention_heads:
            fail("decoder_attention_heads", f"must divide hidden_dim={self.hidden_dim}")
        if self.pixel_decoder_dim % self.pixel_decoder_attention_heads:
            fail("pixel_decoder_attention_heads", f"must divide pixel_decoder_dim={self.pixel_decoder_dim}")
        if self.pixel_decoder_dim % self.group_norm_groups:
            fail("group_norm_groups", f"must divide pixel_decoder_dim={self.pixel_decoder_dim}")
        if self.hidden_dim != self.pixel_decoder_dim:
            fail("hidden_dim", f"must equal pixel_decoder_dim={self.pixel_decoder_dim} (no decoder input projection)")
        if self.mask_dim != self.hidden_dim:
            fail(
                "mask_dim",
                f"must equal hidden_dim={self.hidden_dim} (mask pooling adds pooled mask features to the queries)",
            )
        for field in ("ensemble_alpha", "ensemble_beta", "importance_sample_ratio"):
            value = getattr(self, field)
            if not 0.0 <= value <= 1.0:
                fail(field, f"must lie in [0, 1], got {value!r}")
        for field in ("decoder_dropout", "pixel_decoder_dropout"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                fail(field, f"must lie in [0, 1), got {value!r}")
        for field in ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "init_std"):
            if getattr(self, field) < 0:
                fail(field, f"must be >= 0, got {getattr(self, field)!r}")
        if self.logit_scale_max <= 0:
            fail("logit_scale_max", f"must be > 0, got {self.logit_scale_max!r}")
        if self.oversample_ratio < 1.0:
            fail("oversample_ratio", f"must be >= 1, got {self.oversample_ratio!r}")
        if not self.prompt_templates:
            fail("prompt_templates", "must not be empty")
        for template in self.prompt_templates:
            if template.count("{}") != 1:
                fail("prompt_templates", f"each template needs exactly one '{{}}', got {template!r}")
        if not self.train_vocabulary:
            fail("train_vocabulary", "must not be empty")
