"""Training: arguments, optimiser groups, schedule, metrics, evaluation, resume, two processes
(ita_segmentation/training/, scripts/train.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import EvalPrediction

from image_processing_ita import ITAImageProcessor
from ita_segmentation.errors import ITAUsageError
from ita_segmentation.segmentation_data import load_segmentation_dataset
from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES
from ita_segmentation.training.arguments import ITADataArguments, ITAModelArguments
from ita_segmentation.training.data import IGNORE_LABEL
from ita_segmentation.training.entry import main, parse_arguments
from ita_segmentation.training.loading import load_model
from ita_segmentation.training.metrics import ITASegmentationMetrics
from ita_segmentation.training.precompute import precompute_dominant_categories
from ita_segmentation.training.recipe import (
    COCO_DECAY_STEPS,
    COCO_MAX_ITER,
    StepLRSchedule,
    build_parameter_groups,
    scaled_decay_steps,
)
from ita_segmentation.training.trainer import ITATrainer, build_trainer
from ita_segmentation.training.training_arguments import ITATrainingArguments
from modeling_ita import ITAForOpenVocabSegmentation

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models gain little from threads, and a single thread does not stall when other processes (the
    other pytest-xdist worker, say) keep both cores busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_run(tmp_path, name="run", num_train=32, num_eval=8, model=None, data=None, **training):
    """Arguments for a tiny ITA on generated shapes."""
    config_path = tmp_path / "config.json"
    if not config_path.exists():
        tiny_config().to_json_file(config_path)
    model_args = ITAModelArguments(config_path=str(config_path), **(model or {}))
    data_args = ITADataArguments(
        dataset_layout="synthetic",
        eval_split="validation",
        crop_size=64,
        min_scale=0.5,
        max_scale=1.5,
        eval_shortest_edge=64,
        eval_longest_edge=96,
        synthetic_num_train_images=num_train,
        synthetic_num_eval_images=num_eval,
        **(data or {}),
    )
    settings = dict(
        output_dir=str(tmp_path / name),
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=2e-3,
        max_steps=4,
        save_strategy="no",
        logging_steps=1000,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(training)
    return model_args, data_args, ITATrainingArguments(**settings)


# ------------------------------------------------------------------------------------------------ arguments


def test_command_line_defaults_follow_the_fcclip_recipe(tmp_path):
    model_args, data_args, args = parse_arguments(["--output_dir", str(tmp_path), "--use_cpu"])
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm, args.warmup_steps) == (1e-4, 0.05, 0.01, 10)
    assert args.backbone_lr_multiplier == 0.1 and args.lr_decay_factor == 0.1 and args.optim == "adamw_torch"
    assert not args.remove_unused_columns and not args.eval_do_concat_batches and args.batch_eval_metrics
    assert scaled_decay_steps(COCO_MAX_ITER, args.lr_decay_fractions) == list(COCO_DECAY_STEPS)
    jitter = (data_args.crop_size, data_args.min_scale, data_args.max_scale, data_args.random_flip)
    assert jitter == (1024, 0.1, 2.0, True)
    assert data_args.dominant_categories == "online" and model_args.clip_checkpoint is None
    _, data_args, args = parse_arguments(
        [
            "--output_dir",
            str(tmp_path),
            "--class_names",
            "sofa,couch",
            "wall",
            "--lr_decay_steps",
            "5",
            "9",
            "--bf16",
            "--use_cpu",
        ]
    )
    assert data_args.class_names == ["sofa,couch", "wall"] and args.lr_decay_steps == [5, 9] and args.bf16


# ------------------------------------------------------------------------------------------------ optimiser


@pytest.mark.parametrize("variant", ["ita", "fcclip"])
def test_parameter_groups_follow_mask2formers_build_optimizer(variant):
    config = tiny_config() if variant == "ita" else tiny_config(num_dominant_categories=0, decoder_self_attention=True)
    model = ITAForOpenVocabSegmentation(config)
    groups = build_parameter_groups(model, learning_rate=1e-4, weight_decay=0.05, backbone_lr_multiplier=0.1)
    by_name = {group["name"]: group for group in groups}
    settings = {name: (group["lr"], group["weight_decay"]) for name, group in by_name.items()}
    expected = {"decay": (1e-4, 0.05), "no_decay": (1e-4, 0.0)}
    if variant == "ita":
        expected["backbone_no_decay"] = (pytest.approx(1e-5), 0.0)
    assert settings == expected

    names = {name: group["name"] for group in groups for name in group["param_names"]}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(names) == trainable  # every trainable parameter exactly once ...
    assert sum(len(group["params"]) for group in groups) == len(trainable)
    assert not any(name.startswith("backbone.") for name in names)  # ... and no frozen CLIP parameter
    for name in (
        "decoder.query_feat.weight",
        "decoder.query_embed.weight",
        "decoder.level_embed.weight",
        "void_embedding.weight",
        "decoder.decoder_norm.weight",
        "decoder.decoder_norm.bias",
        "pixel_decoder.input_proj.0.1.weight",
    ):
        assert names[name] == "no_decay", name
    for name in (
        "decoder.class_embed.layers.0.weight",
        "decoder.class_embed.layers.0.bias",
        "decoder.logit_scale",
        "pixel_decoder.transformer.level_embed",
    ):
        assert names[name] == "decay", name
    if variant == "ita":
        assert names["dominant_categories.projection"] == "backbone_no_decay"
        assert by_name["backbone_no_decay"]["param_names"] == ["dominant_categories.projection"]


def test_step_schedule_scales_cocos_milestones_to_max_steps(tmp_path):
    schedule = StepLRSchedule(warmup_steps=10, warmup_factor=0.5, decay_steps=(89, 96), decay_factor=0.1)
    assert schedule(0) == 0.5 and schedule(5) == pytest.approx(0.75) and schedule(10) == 1.0
    assert schedule(88) == 1.0 and schedule(89) == pytest.approx(0.1) and schedule(96) == pytest.approx(0.01)
    assert scaled_decay_steps(100, [step / COCO_MAX_ITER for step in COCO_DECAY_STEPS]) == [89, 96]

    model_args, _, args = tiny_run(tmp_path, learning_rate=1e-4)
    model = load_model(model_args, SYNTHETIC_CLASS_NAMES)
    trainer = ITATrainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    rates = []
    for _ in range(100):
        rates.append([group["lr"] for group in trainer.optimizer.param_groups])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    # Mask2Former's warm-up factor 1.0: flat warm-up; x0.1 at 89 and 96; the DCU projection at x0.1 throughout.
    assert rates[0] == rates[88] == [1e-4, 1e-4, pytest.approx(1e-5)]
    assert rates[89] == [pytest.approx(1e-5), pytest.approx(1e-5), pytest.approx(1e-6)]
    assert rates[96] == [pytest.approx(1e-6), pytest.approx(1e-6), pytest.approx(1e-7)]


def test_clip_checkpoint_fills_a_new_models_clip(tmp_path):
    source = ITAForOpenVocabSegmentation(tiny_config())
    torch.save({"state_dict": source.backbone.clip_model.state_dict()}, tmp_path / "clip.bin")
    model_args, _, _ = tiny_run(tmp_path, model={"clip_checkpoint": str(tmp_path / "clip.bin")})
    model = load_model(model_args, SYNTHETIC_CLASS_NAMES)
    assert model.config.train_vocabulary == list(SYNTHETIC_CLASS_NAMES)
    for key, value in source.backbone.clip_model.state_dict().items():
        assert torch.equal(model.backbone.clip_model.state_dict()[key], value), key
    with pytest.raises(ITAUsageError, match="model_name_or_path alone"):
        load_model(ITAModelArguments(model_name_or_path=str(tmp_path), clip_checkpoint="clip.bin"))


# ------------------------------------------------------------------------------------------------ evaluation


def test_metrics_accumulate_a_confusion_matrix_and_skip_padding():
    metrics = ITASegmentationMetrics(num_labels=3)
    pad = IGNORE_LABEL
    first = EvalPrediction(
        predictions=torch.tensor([[0, 0, 1, 2], [2, 2, 0, 0]]),
        label_ids=torch.tensor([[0, 1, 1, pad], [2, 2, pad, pad]]),
    )
    assert metrics(first, compute_result=False) == {}
    second = EvalPrediction(predictions=np.array([[1, 1]]), label_ids=np.array([[1, 0]]))
    scores = metrics(second, compute_result=True)
    # (reference, prediction): (0,0) (1,0) (1,1) (2,2) (2,2) (1,1) (0,1); IoU 1/3, 2/4, 1; 5 of 7 right.
    assert scores["mean_iou"] == pytest.approx((1 / 3 + 2 / 4 + 1) / 3)
    assert scores["overall_accuracy"] == pytest.approx(5 / 7)
    assert metrics(second, compute_result=True)["mean_iou"] == pytest.approx(0.25)  # counts reset: IoU 0 and 1/2


def test_trainer_insists_on_batch_eval_metrics(tmp_path):
    model_args, _, args = tiny_run(tmp_path, batch_eval_metrics=False)
    with pytest.raises(ValueError, match="batch_eval_metrics=True"):
        ITATrainer(model=load_model(model_args), args=args, compute_metrics=ITASegmentationMetrics(5))


def test_evaluation_reduces_each_batch_to_label_maps(tmp_path):
    trainer = build_trainer(*tiny_run(tmp_path, num_train=4, num_eval=3))
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(3)])
    trainer.model.eval()
    loss, predictions, references = trainer.prediction_step(trainer.model, batch, prediction_loss_only=False)
    sizes = batch["image_sizes"].tolist()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert predictions.shape == references.shape == (3, max(h * w for h, w in sizes))
    for row, (height, width) in enumerate(sizes):
        assert (predictions[row, : height * width] >= 0).all() and (predictions[row, : height * width] < 5).all()
        assert (predictions[row, height * width :] == IGNORE_LABEL).all()
        assert set(references[row, : height * width].unique().tolist()) <= set(range(5))
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0 and np.isfinite(metrics["eval_loss"])


def test_training_improves_miou_on_held_out_scenes(tmp_path):
    trainer = build_trainer(*tiny_run(tmp_path, num_train=48, num_eval=16, max_steps=30))
    before = trainer.evaluate()["eval_mean_iou"]
    trainer.train()
    after = trainer.evaluate()["eval_mean_iou"]
    assert after > before + 0.2, (before, after)


# ------------------------------------------------------------------------------------------------ resume


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def trainable_state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    settings = dict(
        num_train=8,
        num_eval=2,
        max_steps=6,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=3,
        lr_warmup_factor=0.25,
        warmup_steps=2,
        lr_decay_steps=[4],
    )
    uninterrupted = build_trainer(*tiny_run(tmp_path, "full", **settings))
    uninterrupted.train()

    killed = build_trainer(*tiny_run(tmp_path, "resumed", **settings), callbacks=[StopAt(3)])
    killed.train()
    assert killed.state.global_step == 3 and (tmp_path / "resumed" / "checkpoint-3").is_dir()
    del killed

    resumed = build_trainer(*tiny_run(tmp_path, "resumed", **settings))  # a fresh process would build this
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6

    expected, actual = trainable_state(uninterrupted.model), trainable_state(resumed.model)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name  # bitwise: same data, same random points
    assert resumed.lr_scheduler.get_last_lr() == uninterrupted.lr_scheduler.get_last_lr()


# ------------------------------------------------------------------------------------------------ processes

LAUNCHER = """
import sys, torch
sys.path.insert(0, {tests!r})
from ita_segmentation.training import main
trainer = main(sys.argv[1:])
state = {{k: v.detach() for k, v in trainer.model.state_dict().items()}}
torch.save({{"state": state, "world_size": trainer.args.world_size, "step": trainer.state.global_step}},
           f"{{trainer.args.output_dir}}/rank{{trainer.args.process_index}}.pt")
"""


def test_two_processes_train_to_identical_weights(tmp_path):
    tiny_config().to_json_file(tmp_path / "config.json")
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(tests=str(ROOT / "tests")))
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(launcher),
        "--config_path",
        str(tmp_path / "config.json"),
        "--dataset_layout",
        "synthetic",
        "--synthetic_num_train_images",
        "8",
        "--crop_size",
        "64",
        "--min_scale",
        "0.5",
        "--max_scale",
        "1.5",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        "3",
        "--learning_rate",
        "2e-3",
        "--use_cpu",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(output),
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # A session of its own, so that a hang takes the launcher's workers down with it.
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail("the two-process run did not finish in 600 s:\n" + log[-3000:])
    assert process.returncode == 0, log[-6000:]
    ranks = [torch.load(output / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    saved = load_file(output / "model.safetensors")
    initial = ITAForOpenVocabSegmentation(tiny_config()).state_dict()
    assert torch.equal(saved["decoder.query_feat.weight"], ranks[0]["state"]["decoder.query_feat.weight"])
    assert not torch.equal(saved["decoder.query_feat.weight"], initial["decoder.query_feat.weight"])


# ------------------------------------------------------------------------------------------------ dominant categories


def test_precomputed_dominant_categories_feed_training(tmp_path):
    model_args, data_args, args = tiny_run(tmp_path)
    rows = load_segmentation_dataset(None, layout="synthetic", synthetic_num_images=6, synthetic_image_size=48)
    model = load_model(model_args, SYNTHETIC_CLASS_NAMES)
    processor = ITAImageProcessor.for_model_config(model.config, size={"shortest_edge": 64, "longest_edge": 96})
    with_column = precompute_dominant_categories(model, rows, SYNTHETIC_CLASS_NAMES, processor, batch_size=4)
    k = model.config.num_dominant_categories
    candidates = model.encode_vocabulary(list(SYNTHETIC_CLASS_NAMES)).candidate_names
    names = with_column["dominant_categories"]
    assert len(names) == 6 and all(len(row) == k and set(row) <= set(candidates) for row in names)
    # The ranking the model itself makes at inference on the same inputs.
    model.eval()
    with torch.no_grad():
        outputs = model(**processor(rows[:2]["image"], return_tensors="pt"), class_names=list(SYNTHETIC_CLASS_NAMES))
    assert outputs.dominant_categories == names[:2]

    # Through the command line: precompute, then train from the saved column.
    saved = tmp_path / "with_column"

    common = [
        "--config_path",
        str(tmp_path / "config.json"),
        "--dataset_layout",
        "synthetic",
        "--synthetic_num_train_images",
        "6",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    precompute = ["--precompute_dominant_categories_to", str(saved), "--output_dir", str(tmp_path / "unused")]
    assert main(common + precompute) is None
    trainer = build_trainer(
        ITAModelArguments(config_path=str(tmp_path / "config.json")),
        ITADataArguments(dataset_name_or_path=str(saved), dominant_categories="column", crop_size=64),
        args,
    )
    item = trainer.train_dataset[0]
    stored = trainer.train_dataset.dataset[0]["dominant_categories"]
    assert [candidates[i] for i in item["dominant_category_ids"].tolist()] == stored
    trainer.train()
    assert trainer.state.global_step == 4


# ------------------------------------------------------------------------------------------------ demo


def test_demo_trains_saves_and_segments(tmp_path):
    import importlib.util

    from transformers import AutoModel, AutoProcessor

    spec = importlib.util.spec_from_file_location("ita_demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    output = tmp_path / "demo"
    status = demo.main(
        [
            "--output",
            str(output),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--image-size",
            "64",
            "--train-images",
            "4",
            "--eval-images",
            "2",
            "--samples",
            "2",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    results = json.loads((output / "results.json").read_text())
    assert 0 <= results["mean_iou_untrained"] <= 1 and 0 <= results["mean_iou_trained"] <= 1
    assert "random weights" in results["notice"]
    model = AutoModel.from_pretrained(output / "model")
    processor = AutoProcessor.from_pretrained(output / "model")
    assert model.config.train_vocabulary == list(SYNTHETIC_CLASS_NAMES)
    assert type(processor).__name__ == "ITAProcessor" and processor.image_processor.size.shortest_edge == 64
    assert len(list((output / "segmentations").glob("*_overlay.png"))) == 2
    assert len(list((output / "ground_truth").glob("*_truth.png"))) == 2


# ------------------------------------------------------------------------------------------------ data checked first


def bad_label_folders(root, num_images=6):
    """Label-map folders of generated scenes in which one label map has a small region of class 9 (there are 5
    classes), small enough for most random crops to miss it."""
    from ita_segmentation.synthetic import make_synthetic_dataset, write_label_map_folders

    _, labels = write_label_map_folders(make_synthetic_dataset(num_images, 48, seed=5), root, split="train")
    bad = sorted(labels.iterdir())[2]
    label = np.array(Image.open(bad))
    label[:2, :2] = 9
    Image.fromarray(label).save(bad)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASS_NAMES))
    return bad


def test_a_bad_label_map_stops_training_before_the_model_is_built(tmp_path, monkeypatch):
    from ita_segmentation.evaluation.data_check import DataCheckError
    from ita_segmentation.training import trainer as trainer_module

    bad = bad_label_folders(tmp_path / "data")
    model_args, data_args, args = tiny_run(tmp_path)
    data_args.dataset_layout, data_args.eval_split = "auto", None
    data_args.dataset_name_or_path = str(tmp_path / "data")
    data_args.vocabulary_file = str(tmp_path / "data" / "classes.txt")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(trainer_module, "load_model", no_model)
    with pytest.raises(DataCheckError) as error:
        build_trainer(model_args, data_args, args)
    assert f"{bad}: class ids [9] are outside the vocabulary of 5 classes" in str(error.value)
    assert "--skip_bad_samples" in str(error.value)
    assert f"--vocabulary_file {data_args.vocabulary_file} (5 classes)" in str(error.value)  # the list to fix

    monkeypatch.undo()
    data_args.skip_bad_samples = True
    trainer = build_trainer(model_args, data_args, args)
    assert len(trainer.train_dataset) == 5
    assert bad.name not in trainer.train_dataset.dataset["file_name"]


def test_train_command_reports_bad_data_without_a_traceback(tmp_path, capsys):
    import ita_cli

    bad = bad_label_folders(tmp_path / "data")
    tiny_config().to_json_file(tmp_path / "config.json")
    status = ita_cli.train(
        [
            "--config_path",
            str(tmp_path / "config.json"),
            "--dataset_name_or_path",
            str(tmp_path / "data"),
            "--vocabulary_file",
            str(tmp_path / "data" / "classes.txt"),
            "--output_dir",
            str(tmp_path / "run"),
            "--use_cpu",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--max_steps",
            "1",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "ita-train: error: 1 problem(s) in 1 of the 6 samples of the training data" in err and str(bad) in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_an_earlier_run_is_not_overwritten_silently(tmp_path, capsys):
    import ita_cli

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"an earlier run's weights")
    tiny_config().to_json_file(tmp_path / "config.json")
    argv = [
        "--config_path",
        str(tmp_path / "config.json"),
        "--dataset_layout",
        "synthetic",
        "--synthetic_num_train_images",
        "4",
        "--crop_size",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        str(tmp_path / "run"),
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
    ]
    assert ita_cli.train(argv) == 2  # a usage error: found before any work
    assert f"output_dir {tmp_path / 'run'} is not empty (model.safetensors)" in capsys.readouterr().err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == b"an earlier run's weights"
    assert ita_cli.train(argv + ["--overwrite_output_dir"]) == 0
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != b"an earlier run's weights"
