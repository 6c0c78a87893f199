"""End-to-end inference cost of the full-size model against its floor, the frozen CLIP trunk alone.

One photo (600x800 by default, `--photo-size`; the processor resizes it to a short side of 800, e.g. 800x1067
padded to 800x1088), the A-150 vocabulary (150 classes with FC-CLIP's synonyms; `--vocabulary ade847` for 847),
batch 1, random weights (the cost does not depend on them), vocabulary encoded once before timing. End-to-end =
`ITAProcessor` preprocessing + model forward + `post_process_semantic_segmentation` to the photo's own size.
Trunk = `backbone.extract_features` (ConvNeXt stem + 4 stages) on the same padded input. The two are timed alternately, `--repeats` times each after a
warm-up, and the script prints medians and their ratio; per-stage times come from timers wrapped around the
model's own methods during the end-to-end runs (no mirrored forward). Peak memory is the rise of the
process's resident set (Linux high-water mark, see `measure.PeakRSS`) during one inference.

    python benchmarks/bench_inference.py --threads 2 --repeats 3
    python benchmarks/bench_inference.py --photo-size 3000 4000 --vocabulary ade847
    python benchmarks/bench_inference.py --dominant-category-features dense_features
    python benchmarks/bench_inference.py --dtype bfloat16 --channels-last
    python benchmarks/bench_inference.py --backend onnxruntime --onnx-dir /tmp/ita-onnx --profile-onnxruntime

With `--backend onnxruntime` the same model is exported with `ita-export`'s code to `--onnx-dir` (once: later runs
reuse the folder), and three things are timed alternately: the PyTorch trunk alone, PyTorch end-to-end and
onnxruntime end-to-end (`ITAOnnxModel`, the same processor and post-processing); both end-to-end runs pass the
processor's CLIP views to the model.
"""

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from measure import PeakRSS, StageTimer, machine_description, page_faults, rss_mib, set_threads

from configuration_ita import ITAConfig
from ita_segmentation.evaluation.benchmark_names import VOCABULARY_DIR
from ita_segmentation.vocabulary_files import read_vocabulary_file
from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

STAGES = ("preprocess", "trunk", "pixel decoder", "DCU", "decoder", "out-of-vocab classifier", "post-processing")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (after the warm-up)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="with --backend onnxruntime: warm-up rounds before the timed ones (default 2: onnxruntime's "
        "memory arena grows through its second run)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16 runs the forward under CPU autocast (the pixel decoder stays float32)",
    )
    parser.add_argument("--channels-last", action="store_true", help="channels-last CLIP trunk and input")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trunk stages and both decoders")
    parser.add_argument("--variant", choices=("ita", "fcclip"), default="ita")
    parser.add_argument(
        "--dominant-category-features",
        choices=("clip_image", "dense_features"),
        default=None,
        help="ITAConfig.dominant_category_features (default: the config's default)",
    )
    parser.add_argument(
        "--post-process-chunk-elements",
        type=int,
        default=None,
        help="ITAImageProcessor.post_process_chunk_elements (memory bound of post-processing)",
    )
    parser.add_argument(
        "--auxiliary-logits",
        action="store_true",
        help="call the model with output_auxiliary_logits=True: the decoder then computes every "
        "intermediate prediction at full resolution (what it always did before it skipped them)",
    )
    parser.add_argument(
        "--photo-size",
        "--image-size",
        dest="photo_size",
        type=int,
        nargs=2,
        default=(600, 800),
        metavar=("HEIGHT", "WIDTH"),
        help="the input photo's size, also the label map's size",
    )
    parser.add_argument(
        "--vocabulary", default="ade150", help="a class list in ita_segmentation/evaluation/vocabularies"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        choices=("pytorch", "onnxruntime"),
        default="pytorch",
        help="onnxruntime: also time the exported model (see above)",
    )
    parser.add_argument(
        "--onnx-dir",
        default=None,
        help="the ONNX folder of this script's model (--variant, --seed, --dominant-category-features): "
        "exported there first (minutes) when it holds none; default /tmp/ita-bench-onnx-VARIANT-seedSEED",
    )
    parser.add_argument(
        "--profile-onnxruntime",
        action="store_true",
        help="with --backend onnxruntime: after the timings, profile one warm run of the graph "
        "(onnxruntime's profiler) and print its time by operator type and by module",
    )
    parser.add_argument(
        "--vocabulary-cache",
        default=None,
        help="a file holding the encoded vocabulary: written after the first encoding, read by later "
        "runs (same --seed and --variant: the same random text tower) to skip minutes of text encoding",
    )
    return parser.parse_args(argv)


def build_model(args):
    overrides = {}
    if args.dominant_category_features is not None:
        overrides["dominant_category_features"] = args.dominant_category_features
    config = ITAConfig.fcclip(**overrides) if args.variant == "fcclip" else ITAConfig(**overrides)
    model = ITAForOpenVocabSegmentation(config).eval()
    trunk = model.backbone.clip_model.visual.trunk
    if args.channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if args.compile:
        trunk.stem.compile()
        for stage in trunk.stages:
            stage.compile()
        model.pixel_decoder.compile()
        model.decoder.compile()
    return model


def load_vocabulary(model, name, cache=None, device=None):
    """The class list `name` of `VOCABULARY_DIR` encoded by `model`: read from the file `cache` when it holds it
    (the same seeded random text tower gives the same encoding), else encoded and written there. Says which and
    how long it took (never part of the timings)."""
    class_names = read_vocabulary_file(VOCABULARY_DIR / f"{name}.txt", allow_shared_synonyms=True)
    start = time.perf_counter()
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        vocabulary = torch.load(cache, weights_only=False, map_location=device)
        if vocabulary.class_names != tuple(class_names):
            raise SystemExit(f"{cache} holds another vocabulary")
        how = f"read from {cache} in"
    else:
        vocabulary = model.encode_vocabulary(class_names)
        how = "cold encoding"
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(vocabulary, cache)
    print(
        f"vocabulary {name}: {len(class_names)} classes, {len(vocabulary.synonyms)} synonyms, {how} "
        f"{time.perf_counter() - start:.1f} s (not part of the timings below)",
        flush=True,
    )
    return vocabulary


def instrument(model, processor, timer):
    """Time the model's parts by wrapping the methods its forward calls (instance attributes shadow them)."""

    def wrap(owner, name, stage):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with timer(stage):
                return original(*args, **kwargs)

        setattr(owner, name, timed)

    wrap(model.backbone, "extract_features", "trunk")
    wrap(model.pixel_decoder, "forward", "pixel decoder")
    wrap(model, "unearth_dominant_categories", "DCU")
    wrap(model.decoder, "forward", "decoder")
    wrap(sys.modules[type(model).__module__], "out_of_vocabulary_logits", "out-of-vocab classifier")
    wrap(processor, "post_process_semantic_segmentation", "post-processing")


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    print(machine_description(args.threads))
    print(
        f"options: variant={args.variant} dtype={args.dtype} channels_last={args.channels_last} "
        f"compile={args.compile} dominant_category_features={args.dominant_category_features or 'default'} "
        f"post_process_chunk_elements={args.post_process_chunk_elements or 'default'} "
        f"auxiliary_logits={args.auxiliary_logits}"
    )

    rss_start = rss_mib()
    start = time.perf_counter()
    model = build_model(args)
    processor = ITAProcessor()
    if args.post_process_chunk_elements is not None:
        processor.image_processor.post_process_chunk_elements = args.post_process_chunk_elements
    print(
        f"model built in {time.perf_counter() - start:.1f} s; RSS {rss_mib() - rss_start:.0f} MiB above start "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)"
    )

    vocabulary = load_vocabulary(model, args.vocabulary, args.vocabulary_cache)

    rng = np.random.default_rng(args.seed)
    height, width = args.photo_size
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def forward():
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad(), autocast():
            return model(
                pixel_values=inputs["pixel_values"].contiguous(memory_format=memory_format),
                image_sizes=inputs["image_sizes"],
                vocabulary=vocabulary,
                output_auxiliary_logits=args.auxiliary_logits,
            )

    def end_to_end():
        return processor.post_process_semantic_segmentation(forward(), target_sizes=[(height, width)])[0]

    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].contiguous(memory_format=memory_format)
    print(f"input {height}x{width} -> padded {tuple(pixel_values.shape[-2:])}")
    if args.backend == "onnxruntime":
        return compare_onnxruntime(args, model, processor, vocabulary, image, pixel_values)

    extract_features = model.backbone.extract_features  # unwrapped: `instrument` below times the model's calls

    def trunk_alone():
        with torch.no_grad(), autocast():
            return extract_features(pixel_values)

    timer = StageTimer()
    start = time.perf_counter()
    trunk_alone()
    warm_trunk = time.perf_counter() - start
    start = time.perf_counter()
    label_map = end_to_end()
    print(
        f"warm-up: trunk {warm_trunk:.2f} s, end-to-end {time.perf_counter() - start:.2f} s "
        f"(includes compilation with --compile); label map {tuple(label_map.shape)}"
    )

    instrument(model, processor, timer)
    trunk_times, total_times, trunk_cpu, total_cpu = [], [], [], []
    for _ in range(args.repeats):
        start, cpu = time.perf_counter(), time.process_time()
        trunk_alone()
        trunk_times.append(time.perf_counter() - start)
        trunk_cpu.append(time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        end_to_end()
        total_times.append(time.perf_counter() - start)
        total_cpu.append(time.process_time() - cpu)

    trunk = statistics.median(trunk_times)
    total = statistics.median(total_times)
    print(f"\nmedians over {args.repeats} alternating runs (seconds):")
    print(f"  {'CLIP trunk alone (floor)':<28}{trunk:8.2f}   runs {' '.join(f'{t:.2f}' for t in trunk_times)}")
    print(f"  {'end-to-end':<28}{total:8.2f}   runs {' '.join(f'{t:.2f}' for t in total_times)}")
    print("  stages of the end-to-end runs:")
    accounted = 0.0
    for stage in STAGES:
        if stage in timer.samples:
            value = timer.median(stage)
            accounted += value
            print(f"    {stage:<26}{value:8.2f}   {value / total:6.1%}")
    # Medians are not additive: with noisy runs this remainder can even come out slightly negative.
    print(
        f"    {'rest (total - stages)':<26}{total - accounted:8.2f}   {(total - accounted) / total:6.1%}   "
        "(preprocessing, ensemble)"
    )
    print(f"\nRATIO end-to-end / trunk alone: {total / trunk:.2f}  (target <= 1.5)")
    # On a shared machine the wall-clock ratio moves with other jobs; the CPU time this process used (all its
    # threads) moves much less, but leaves out time spent waiting on a single thread.
    cpu_trunk, cpu_total = statistics.median(trunk_cpu), statistics.median(total_cpu)
    print(
        f"CPU time of this process, medians: trunk {cpu_trunk:.2f} s, end-to-end {cpu_total:.2f} s, "
        f"RATIO {cpu_total / cpu_trunk:.2f}"
    )

    peak = PeakRSS()
    end_to_end()
    inference_peak = peak.delta_mib()
    peak.reset()
    trunk_alone()
    trunk_peak = peak.delta_mib()
    note = "" if peak.resettable else " (clear_refs not writable: lifetime peaks, upper bounds)"
    print(
        f"peak RSS rise during one inference: end-to-end {inference_peak:.0f} MiB, trunk alone "
        f"{trunk_peak:.0f} MiB{note}; RSS now {rss_mib():.0f} MiB"
    )

    if args.dtype != "float32" or args.channels_last or args.auxiliary_logits:
        # How far the option moves the numbers: the same model and input in float32 with a contiguous input
        # and without auxiliary logits as the reference. (Label maps say little here: with random weights one
        # class tends to win everywhere.)
        with torch.no_grad():
            features = trunk_alone()["clip_vis_dense"].float()
            reference_features = extract_features(pixel_values.contiguous())["clip_vis_dense"]
            outputs = forward()
            autocast = functools.partial(torch.autocast, "cpu", enabled=False)
            memory_format = torch.contiguous_format
            args.auxiliary_logits = False
            reference = forward()
        print(
            "against float32, a contiguous input and no auxiliary logits (max abs diff, share of the reference's range):"
        )
        for name, ours, theirs in (
            ("trunk features", features, reference_features),
            ("class log-probabilities", outputs.ensemble_log_probs, reference.ensemble_log_probs),
            ("mask logits", outputs.masks_queries_logits, reference.masks_queries_logits),
        ):
            difference = (ours.float() - theirs).abs().max().item()
            print(f"  {name:<24}{difference:9.3g}  ({difference / (theirs.max() - theirs.min()).item():.2e})")


# ------------------------------------------------------------------------------------------------ onnxruntime
def onnx_model_for(args, model, processor):
    """The `ITAOnnxModel` of this script's model: read from `--onnx-dir`, exported there first when the folder
    holds no export of this model."""
    from ita_segmentation.onnx import ITAOnnxModel, is_onnx_model_folder
    from ita_segmentation.onnx.export import export_onnx
    from ita_segmentation.onnx.runtime import read_manifest

    source = (
        f"benchmarks/bench_inference.py --variant {args.variant} --seed {args.seed} "
        f"--dominant-category-features {model.config.dominant_category_features}"
    )
    folder = Path(args.onnx_dir or f"/tmp/ita-bench-onnx-{args.variant}-seed{args.seed}")
    if not (is_onnx_model_folder(folder) and read_manifest(folder)["exported_from"] == source):
        if folder.is_dir() and any(folder.iterdir()):
            raise SystemExit(
                f"--onnx-dir {folder} holds something else than an export of this model; give a new folder"
            )
        start = time.perf_counter()
        print(f"exporting to {folder} (once; later runs reuse it)", flush=True)
        export_onnx(
            model, folder, processor=processor, source=source, log=lambda message: print(f"  {message}", flush=True)
        )
        print(f"export took {time.perf_counter() - start:.0f} s")
    return ITAOnnxModel.from_pretrained(folder, num_threads=args.threads)


def compare_onnxruntime(args, model, processor, vocabulary, image, pixel_values):
    """PyTorch trunk alone, PyTorch end-to-end and onnxruntime end-to-end, timed alternately; the same table."""
    onnx_model = onnx_model_for(args, model, processor)
    height, width = image.shape[:2]
    timer = StageTimer()

    def end_to_end(runner, stages=False):
        def stage(name):
            return timer(name) if stages else contextlib.nullcontext()

        with stage("preprocess"):
            inputs = processor(images=image, return_tensors="pt")
            inputs.pop("pixel_mask")
        with stage("onnxruntime graph"), torch.no_grad():
            outputs = runner(**inputs, vocabulary=vocabulary)
        with stage("post-processing"):
            labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
        return outputs, labels

    def trunk_alone():
        with torch.no_grad():
            return model.backbone.extract_features(pixel_values)

    runs = {
        "trunk": lambda: trunk_alone(),
        "pytorch": lambda: end_to_end(model),
        "onnxruntime": lambda: end_to_end(onnx_model, True),
    }
    # Two warm-up rounds: with dynamic shapes onnxruntime's memory arena is still growing during its second run
    # (measured: ~190,000 page faults, 0.8 GiB, in each of the first two runs, none in the third). The page faults
    # of each timed run are printed, so a run that was not yet steady shows.
    for round_ in range(args.warmup):
        for name, run in runs.items():
            start, faults = time.perf_counter(), page_faults()
            run()
            print(
                f"warm-up {round_ + 1} {name}: {time.perf_counter() - start:.2f} s, {page_faults() - faults} page faults"
            )
    timer.samples.clear()
    times = {name: [] for name in runs}
    faults = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, before = time.perf_counter(), page_faults()
            run()
            times[name].append(time.perf_counter() - start)
            faults[name].append(page_faults() - before)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nmedians over {args.repeats} alternating runs (seconds), load average now {os.getloadavg()[0]:.1f}:")
    for name, label in (
        ("trunk", "PyTorch CLIP trunk alone"),
        ("pytorch", "PyTorch end-to-end"),
        ("onnxruntime", "onnxruntime end-to-end"),
    ):
        print(
            f"  {label:<28}{medians[name]:8.2f}   runs {' '.join(f'{t:.2f}' for t in times[name])}   "
            f"page faults (thousands) {' '.join(f'{n / 1000:.0f}' for n in faults[name])}"
        )
    print("  stages of the onnxruntime end-to-end runs:")
    for stage in ("preprocess", "onnxruntime graph", "post-processing"):
        value = timer.median(stage)
        print(f"    {stage:<26}{value:8.2f}   {value / medians['onnxruntime']:6.1%}")
    # Ratios of medians, and the median of each round's ratios (the three runs of a round are adjacent in time, so
    # they see the same load when other jobs come and go).
    for (top, bottom), label, target in (
        (("onnxruntime", "trunk"), "onnxruntime end-to-end / PyTorch trunk alone", "(target <= 1.3)"),
        (("onnxruntime", "pytorch"), "onnxruntime end-to-end / PyTorch end-to-end", "(target < 1)"),
        (("pytorch", "trunk"), "PyTorch end-to-end / PyTorch trunk alone", ""),
    ):
        rounds = [a / b for a, b in zip(times[top], times[bottom])]
        print(
            f"RATIO {label}: {medians[top] / medians[bottom]:.2f}; per round {' '.join(f'{r:.2f}' for r in rounds)}, "
            f"median {statistics.median(rounds):.2f}  {target}"
        )

    (ours, our_labels), (theirs, their_labels) = end_to_end(onnx_model), end_to_end(model)
    print("onnxruntime against PyTorch on this input (max abs diff / max abs PyTorch):")
    for name in ("class_queries_logits", "masks_queries_logits", "out_vocabulary_logits", "ensemble_log_probs"):
        difference = (getattr(ours, name) - getattr(theirs, name)).abs().max().item()
        print(f"  {name:<24}{difference:9.3g} / {getattr(theirs, name).abs().max().item():.3g}")
    print(f"  label maps: {(our_labels == their_labels).float().mean().item():.4%} of the pixels equal")
    peak = PeakRSS()
    end_to_end(onnx_model)
    note = "" if peak.resettable else " (clear_refs not writable: lifetime peak, an upper bound)"
    print(
        f"peak RSS rise during one onnxruntime inference: {peak.delta_mib():.0f} MiB{note}; RSS now {rss_mib():.0f} MiB"
    )
    if args.profile_onnxruntime:
        profile_graph(onnx_model, lambda runner: end_to_end(runner), args.threads)


MODULES = (
    ("model.backbone.clip_model.visual.trunk", "CLIP trunk (both passes)"),
    ("model.pixel_decoder", "pixel decoder"),
    ("model.decoder", "decoder"),
)


def profile_graph(onnx_model, end_to_end, threads):
    """One warm run of the exported graph under onnxruntime's profiler: its nodes' time by operator type, and by
    the module each node was traced from (nodes that onnxruntime's optimiser made by fusing others carry none)."""
    import ast
    import collections
    import json
    import tempfile

    import onnx
    import onnxruntime

    from ita_segmentation.onnx import ITAOnnxModel
    from ita_segmentation.onnx.export import MODEL_FILE

    folder = Path(onnx_model.folder)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ita-ort-profile-")) / "profile")
    profiled = ITAOnnxModel.from_pretrained(folder, session_options=options)
    for _ in range(3):  # two warm-up runs: onnxruntime's memory arena grows through the second
        end_to_end(profiled)
    profile = Path(profiled.segmentation_session.end_profiling())
    print(f"\nonnxruntime's profile of three runs of the graph written to {profile}")
    events = json.loads(profile.read_text())
    last = [event for event in events if event["name"] == "model_run"][-1]
    scopes = {}
    for node in onnx.load(folder / MODEL_FILE, load_external_data=False).graph.node:
        metadata = {entry.key: entry.value for entry in node.metadata_props}
        scopes[node.name] = ast.literal_eval(metadata.get("pkg.torch.onnx.name_scopes", "[]"))
    by_op, by_module = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if not last["ts"] <= event["ts"] <= last["ts"] + last["dur"]:
            continue
        seconds = event["dur"] / 1e6
        by_op[event["args"]["op_name"]] += seconds
        names = scopes.get(event["name"][: -len("_kernel_time")])
        module = "made by onnxruntime's fusions (no module)" if names is None else "other"
        for prefix, label in MODULES:
            if any(name.startswith(prefix) for name in names or ()):
                module = label
                break
        by_module[module] += seconds
    print(
        f"onnxruntime profile of one warm run of the graph: {last['dur'] / 1e6:.2f} s, nodes {sum(by_op.values()):.2f} s"
    )
    print("  by operator type: " + ", ".join(f"{op} {seconds:.2f}" for op, seconds in by_op.most_common(10)))
    print("  by module: " + ", ".join(f"{module} {seconds:.2f}" for module, seconds in by_module.most_common()))


if __name__ == "__main__":
    main()
