"""Run a model over one benchmark split and accumulate its confusion matrix (`evaluate_dataset`).

The protocol is the one behind FC-CLIP's published numbers:

- one scale, no flip, no sliding window, at the processor's resolution (published: shortest side 800,
  longest at most 1333, padded to a multiple of 32);
- the benchmark's class list with FC-CLIP's synonyms (or a replacement with as many classes), encoded once
  per benchmark;
- each image predicted at its label's size (the label defines the output size), reduced to an argmax label
  map right away and added to a `SegmentationConfusionMatrix`, so memory stays at classes x classes
  whatever the split size;
- the order of post-processing of FC-CLIP's config for that benchmark
  (`SegmentationBenchmark.sem_seg_postprocess_before_inference`);
- detectron2's `SemSegEvaluator` scores (mIoU, fwIoU, mACC, pACC), in percent as it reports them.

Batches only hold images that share one padded input size (`batching.py`).
"""

import time
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from processing_ita import ITAProcessor

from .batching import _BatchPreparer, _check_labels, _upright_image_sizes, plan_batches, undecoded_images
from .benchmarks import BENCHMARKS, benchmark_metadata
from .metric import SegmentationConfusionMatrix

__all__ = ["BenchmarkEvaluation", "evaluate_dataset"]


@dataclass
class BenchmarkEvaluation:
    """The outcome of `evaluate_dataset`.

    Attributes:
        metadata: the dataset's benchmark metadata (`benchmark_metadata`).
        confusion: the filled `SegmentationConfusionMatrix` (summed over processes in a distributed run).
        num_images: images scored.
        seconds: wall time of the loop (vocabulary encoding included).
        sem_seg_postprocess_before_inference: the post-processing order used.
        batch_size: the largest batch.
        num_processes: processes that shared the images.
        interrupted: None for a complete run, else why it stopped (the scores then cover `num_images` only).
    """

    metadata: dict[str, Any]
    confusion: SegmentationConfusionMatrix
    num_images: int
    seconds: float
    sem_seg_postprocess_before_inference: bool
    batch_size: int
    num_processes: int = 1
    interrupted: str | None = None
    scores: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.scores = self.confusion.compute()


def _distributed() -> tuple[int, int]:
    """(rank, world size) of a `torch.distributed` run (`accelerate launch`, `torchrun`), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_dataset(
    model: Any,
    processor: ITAProcessor,
    dataset: datasets.Dataset,
    batch_size: int = 1,
    num_workers: int = 0,
    sem_seg_postprocess_before_inference: bool | None = None,
    progress: bool = True,
) -> BenchmarkEvaluation:
    """Predict every image of a benchmark dataset and accumulate the confusion matrix.

    In a `torch.distributed` run each process predicts every `world_size`-th batch, and the confusion matrices
    are summed at the end: the scores equal those of a single process.

    Args:
        model: an `ITAForOpenVocabSegmentation` in eval mode, or an `ITAOnnxModel`.
        processor: its `ITAProcessor` (the image processor sets the resolution).
        dataset: from `load_benchmark`/`load_hub_benchmark`/`load_segmentation_split` (columns `image`, `label`,
            `file_name`, and the benchmark metadata: classes, ignore index, label reduction).
        batch_size: at most this many images per forward pass, all of one padded input size.
        num_workers: DataLoader processes that decode and preprocess the images.
        sem_seg_postprocess_before_inference: the post-processing order; by default the registered
            benchmark's (FC-CLIP's config for it), else False.
        progress: show a progress bar.

    Raises:
        BenchmarkDataError: an image and its label differ in size (the message names both files). Any error (or
            Ctrl-C) in the loop of a single process carries what was scored before it as its
            `partial_evaluation` attribute (a `BenchmarkEvaluation` marked interrupted).
    """
    metadata = benchmark_metadata(dataset)
    if sem_seg_postprocess_before_inference is None:
        registered = BENCHMARKS.get(metadata["name"])
        sem_seg_postprocess_before_inference = bool(registered and registered.sem_seg_postprocess_before_inference)
    start = time.perf_counter()
    rank, world_size = _distributed()
    device, dtype = model.device, model.dtype  # a PyTorch model's, or an ITAOnnxModel's (CPU, float32)
    if world_size > 1 and rank > 0:
        torch.distributed.barrier()  # the first process encodes the vocabulary (and fills the disk cache) first
    vocabulary = model.encode_vocabulary(metadata["class_names"])
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    confusion = SegmentationConfusionMatrix(
        metadata["num_labels"], ignore_index=metadata["ignore_index"], reduce_labels=metadata["reduce_labels"]
    )

    if batch_size > 1:
        batches = plan_batches(_upright_image_sizes(dataset), batch_size, processor.image_processor)
    else:
        batches = [[index] for index in range(len(dataset))]
    batches = batches[rank::world_size]
    loader = DataLoader(
        undecoded_images(dataset),
        batch_sampler=batches,
        collate_fn=_BatchPreparer(processor.image_processor),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(
        total=sum(len(batch) for batch in batches),
        desc=metadata["display_name"] + (f" (process 1 of {world_size})" if world_size > 1 else ""),
        unit="img",
        disable=not progress or rank > 0,
    )
    num_images = 0

    def outcome(interrupted: str | None = None) -> BenchmarkEvaluation:
        return BenchmarkEvaluation(
            metadata=metadata,
            confusion=confusion,
            num_images=num_images,
            seconds=time.perf_counter() - start,
            sem_seg_postprocess_before_inference=sem_seg_postprocess_before_inference,
            batch_size=batch_size,
            num_processes=world_size,
            interrupted=interrupted,
        )

    with torch.inference_mode(), bar:
        try:
            for batch in loader:
                _check_labels(batch)
                views = batch.get("dominant_category_pixel_values")
                outputs = model(
                    pixel_values=batch["pixel_values"].to(device, dtype, non_blocking=True),
                    image_sizes=batch["image_sizes"].to(device),
                    vocabulary=vocabulary,
                    dominant_category_pixel_values=None
                    if views is None
                    else views.to(device, dtype, non_blocking=True),
                )
                label_maps = processor.post_process_semantic_segmentation(
                    outputs,
                    target_sizes=[label.shape for label in batch["labels"]],
                    sem_seg_postprocess_before_inference=sem_seg_postprocess_before_inference,
                )
                del outputs  # only the label maps outlive the batch
                for label_map, label in zip(label_maps, batch["labels"]):
                    confusion.update(label_map.cpu().numpy(), label)
                num_images += len(label_maps)
                bar.update(len(label_maps))
        except (Exception, KeyboardInterrupt) as error:
            if world_size > 1:  # the other processes wait in the sum below: nothing partial to merge
                raise
            reason = (
                "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
            )
            error.partial_evaluation = outcome(reason)  # type: ignore[union-attr]
            raise
    if world_size > 1:
        counts = torch.from_numpy(confusion.matrix).to(torch.int64)
        counts = torch.cat([counts.flatten(), torch.tensor([num_images], dtype=torch.int64)])
        if torch.distributed.get_backend() == "nccl":
            counts = counts.to(device)
        torch.distributed.all_reduce(counts)
        counts = counts.cpu()
        confusion.matrix[...] = counts[:-1].view_as(torch.from_numpy(confusion.matrix)).numpy()
        num_images = int(counts[-1])
    return outcome()
