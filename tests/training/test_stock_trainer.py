"""The stock `transformers.Trainer` trains, evaluates and checkpoints ITA with the processor as `processing_class`
(configuration_ita's `keys_to_ignore_at_inference`, processing_ita's `ITAProcessor.tokenizer`), and the README's
example of it runs."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments, pipeline
from transformers.trainer_utils import align_special_tokens

from image_processing_ita import ITAImageProcessor
from ita_segmentation.evaluation.metric import SegmentationConfusionMatrix
from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset
from ita_segmentation.training.data import (
    IGNORE_LABEL,
    ITASegmentationCollator,
    ITASegmentationDataset,
    LargeScaleJitter,
    label_map_from_targets,
)
from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor
from modeling_ita.modeling import ITAOpenVocabSegmentationOutput

README = Path(__file__).resolve().parents[2] / "README.md"
STOCK_TRAINER_SECTION = "With the stock transformers Trainer"

# What the Trainer gathers from an evaluation forward, in this order (`ITAConfig.keys_to_ignore_at_inference`
# leaves out the rest); the loss is taken apart by the Trainer itself.
GATHERED = ("class_queries_logits", "masks_queries_logits", "ensemble_log_probs", "image_sizes")


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models gain little from threads, and one thread does not stall beside other busy processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model_and_processor():
    model = ITAForOpenVocabSegmentation(tiny_config())
    image_processor = ITAImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 96})
    return model, ITAProcessor(image_processor=image_processor)


class MeanIoU:
    """A `compute_metrics` for `batch_eval_metrics=True` that reads the stock Trainer's predictions as they come:
    the `GATHERED` tensors and the per-image `mask_labels` / `class_labels` lists."""

    def __init__(self, processor, num_labels):
        self.processor = processor
        self.confusion = SegmentationConfusionMatrix(num_labels, ignore_index=IGNORE_LABEL)
        self.batches = []

    def __call__(self, prediction, compute_result=False):
        outputs = dict(zip(GATHERED, prediction.predictions, strict=True))
        self.batches.append({name: tuple(value.shape) for name, value in outputs.items()})
        mask_labels, class_labels = prediction.label_ids
        label_maps = self.processor.post_process_semantic_segmentation(outputs)
        for label_map, masks, classes in zip(label_maps, mask_labels, class_labels, strict=True):
            self.confusion.update(label_map, label_map_from_targets(masks, classes, label_map.shape))
        if not compute_result:
            return {}
        scores = self.confusion.compute()
        self.confusion.reset()
        return {"mean_iou": scores["mean_iou"], "overall_accuracy": scores["overall_accuracy"]}


# ------------------------------------------------------------------------------------------------ declarations


def test_every_output_field_is_gathered_or_ignored_at_inference():
    ignored = ITAForOpenVocabSegmentation.config_class.keys_to_ignore_at_inference
    fields = [field.name for field in dataclasses.fields(ITAOpenVocabSegmentationOutput)]
    assert set(ignored) <= set(fields), set(ignored) - set(fields)  # no misspelt name, which would ignore nothing
    kept = [name for name in fields if name not in ignored and name != "loss"]
    assert kept == list(GATHERED)  # a new output field must be placed on one side or the other
    assert "keys_to_ignore_at_inference" not in tiny_config().to_dict()  # a class fact, not saved in config.json


def test_processor_is_a_processing_class_without_tokenizer(tmp_path):
    model, processor = tiny_model_and_processor()
    before = model.config.to_dict()
    align_special_tokens(model, processor)  # what Trainer.train calls first with a ProcessorMixin
    assert model.config.to_dict() == before
    assert (processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id) == (
        None,
        None,
        None,
    )
    assert ITAProcessor.get_attributes() == ["image_processor"]  # the stand-in is no part that is saved or loaded
    processor.save_pretrained(tmp_path / "processor")
    assert sorted(path.name for path in (tmp_path / "processor").iterdir()) == ["processor_config.json"]

    # A pipeline given the processor takes its tokenizer and saves it with the rest.
    segmenter = pipeline("zero-shot-image-segmentation", model=model, processor=processor)
    segmenter.save_pretrained(tmp_path / "pipeline")
    saved = AutoProcessor.from_pretrained(tmp_path / "pipeline")
    saved_settings = {k: v for k, v in saved.image_processor.to_dict().items() if k != "auto_map"}  # code travels
    assert isinstance(saved, ITAProcessor) and saved_settings == processor.image_processor.to_dict()
    # The folder is the model's own (flat source files, the pipeline entry naming them), not transformers' raw
    # copy of the pipeline module with the package's imports.
    config = json.loads((tmp_path / "pipeline" / "config.json").read_text())
    assert (
        config["custom_pipelines"]["zero-shot-image-segmentation"]["impl"]
        == "pipeline.ZeroShotImageSegmentationPipeline"
    )
    assert not (tmp_path / "pipeline" / "modeling.py").exists() and (tmp_path / "pipeline" / "pipeline.py").exists()
    assert "from modeling_ita" not in (tmp_path / "pipeline" / "pipeline.py").read_text()


# ------------------------------------------------------------------------------------------------ the stock Trainer


def test_stock_trainer_trains_evaluates_and_saves_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor()
    image_processor = processor.image_processor
    train = ITASegmentationDataset(
        make_synthetic_dataset(8), image_processor, SYNTHETIC_CLASS_NAMES, jitter=LargeScaleJitter(64, 0.75, 1.25)
    )
    evaluation = ITASegmentationDataset(
        make_synthetic_dataset(4, seed=1), image_processor, SYNTHETIC_CLASS_NAMES, name="evaluation"
    )
    metrics = MeanIoU(processor, len(SYNTHETIC_CLASS_NAMES))
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        remove_unused_columns=False,
        batch_eval_metrics=True,
        eval_do_concat_batches=False,
        logging_steps=1,
        save_steps=6,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=ITASegmentationCollator(),
        processing_class=processor,
        compute_metrics=metrics,
    )
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    parameters = dict(model.named_parameters())
    assert all(not torch.equal(parameters[name], value) for name, value in trainable.items() if name.endswith("weight"))
    assert all(torch.equal(parameters[name], value) for name, value in frozen.items())  # CLIP stays frozen

    scores = trainer.evaluate()
    assert math.isfinite(scores["eval_loss"]) and 0.0 <= scores["eval_mean_iou"] <= 1.0
    assert 0.0 < scores["eval_overall_accuracy"] <= 1.0
    num_queries = model.config.num_queries + model.config.num_dominant_categories
    num_classes = len(SYNTHETIC_CLASS_NAMES) + 1
    assert metrics.batches == 2 * [
        {
            "class_queries_logits": (2, num_queries, num_classes),
            "masks_queries_logits": (2, num_queries, 16, 16),
            "ensemble_log_probs": (2, num_queries, num_classes),
            "image_sizes": (2, 2),
        }
    ]

    checkpoint = tmp_path / "run" / "checkpoint-6"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "trainer_state.json"} <= names
    reloaded = AutoModel.from_pretrained(checkpoint)
    assert isinstance(reloaded, ITAForOpenVocabSegmentation)
    reloaded_parameters = dict(reloaded.named_parameters())
    assert all(torch.equal(reloaded_parameters[name], parameter) for name, parameter in parameters.items())
    reloaded_processor = AutoProcessor.from_pretrained(checkpoint)
    assert isinstance(reloaded_processor, ITAProcessor)
    settings = reloaded_processor.image_processor.to_dict()
    settings.pop("auto_map", None)  # written where the checkpoint holds the model's source files
    assert settings == image_processor.to_dict()
    saved = json.loads((checkpoint / "config.json").read_text())
    assert not {"bos_token_id", "eos_token_id", "pad_token_id"} & set(saved)  # nothing aligned into the config


# ------------------------------------------------------------------------------------------------ README


def readme_stock_trainer_example():
    section = README.read_text().split(f"### {STOCK_TRAINER_SECTION}\n")[1].split("\n## ")[0].split("\n### ")[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return block


def test_readme_stock_trainer_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes into runs/
    namespace = {"MODEL": str(tiny_model_dir)}
    exec(readme_stock_trainer_example(), namespace)
    trainer, metrics = namespace["trainer"], namespace["metrics"]
    assert isinstance(trainer, Trainer) and type(trainer) is Trainer  # the stock one
    assert isinstance(trainer.processing_class, ITAProcessor)
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and math.isfinite(metrics["eval_loss"])
    output_dir = Path(trainer.args.output_dir)
    assert isinstance(AutoProcessor.from_pretrained(output_dir), ITAProcessor)
    assert isinstance(AutoModel.from_pretrained(output_dir), ITAForOpenVocabSegmentation)
