"""Vocabulary encoding with the full-size CLIP text tower (16 layers, width 768): truncated against full
77-token context, prompts grouped by length or not, and the cache.

1. The same random subset of A-847 prompts (synonym x template, `--subset` of them) is encoded three ways,
   interleaved `--repeats` times: full 77-token context (what open_clip's `encode_text` runs), the context
   cut to each batch's longest prompt in the given order (the first version of the encoder), and cut after
   grouping prompts of similar length (the encoder now). Printed: median times, ratios, and the largest
   difference of the L2-normalised embeddings against full context. Full context over all of A-847 would take
   most of an hour on a 2-core CPU; its time is extrapolated from the subset and labelled so.
2. Each vocabulary (A-150, A-847 by default) is encoded whole by the model's encoder (all synonyms x 14
   templates, plus the bare names that dominant-category unearthing ranks), cold; then the same call again,
   answered by the memory cache, as a share of the cold one; then by a new encoder (as in a new process) from
   the disk cache, hashing of the text tower's weights included.

    python benchmarks/bench_vocabulary.py --threads 2 --subset 512
    python benchmarks/bench_vocabulary.py --vocabularies ade150 --subset 256
"""

import argparse
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from measure import machine_description, set_threads

from configuration_ita import ITAConfig
from ita_segmentation.evaluation.benchmark_names import VOCABULARY_DIR
from ita_segmentation.vocabulary_files import read_vocabulary_file
from modeling_ita.clip_backbone import ITACLIPBackbone
from modeling_ita.vocabulary import ITAVocabularyEncoder
from processing_ita import parse_vocabulary


def encode_in_batches(backbone, tokens, batch_size, truncate_context):
    """The first version of the encoder: batches in the given order, context cut per batch (or not)."""
    return torch.cat(
        [
            backbone.encode_text(tokens[start : start + batch_size], truncate_context=truncate_context)
            for start in range(0, len(tokens), batch_size)
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subset", type=int, default=512, help="A-847 prompts compared at full context")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timings of each way on the subset")
    parser.add_argument(
        "--vocabularies",
        nargs="*",
        default=["ade150", "ade847"],
        help="class lists encoded whole (truncated) and then from the cache",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per forward (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(machine_description(args.threads))

    config = ITAConfig()
    batch_size = args.batch_size or config.text_batch_size
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    backbone = ITACLIPBackbone(config)
    print(f"CLIP built in {time.perf_counter() - start:.1f} s (random weights); text batch size {batch_size}")
    templates = config.prompt_templates

    # 1. The subset, three ways.
    # FC-CLIP's A-847 list gives a few synonyms to two classes; the benchmark uses it as it is.
    ade847 = read_vocabulary_file(VOCABULARY_DIR / "ade847.txt", allow_shared_synonyms=True)
    synonyms = [
        s for class_synonyms in parse_vocabulary(ade847, allow_shared_synonyms=True).synonyms for s in class_synonyms
    ]
    prompts = [template.format(s) for s in synonyms for template in templates]
    subset = random.Random(args.seed).sample(prompts, min(args.subset, len(prompts)))
    tokens = backbone.tokenize(subset)
    lengths = tokens.argmax(dim=-1) + 1
    print(
        f"\nA-847: {len(synonyms)} synonyms x {len(templates)} templates = {len(prompts)} prompts; subset of "
        f"{len(subset)}, tokens per prompt (with start/end) min {int(lengths.min())} mean "
        f"{lengths.float().mean():.1f} max {int(lengths.max())} of a {tokens.shape[1]}-token context"
    )
    encoder = ITAVocabularyEncoder(templates, config.train_vocabulary, batch_size=batch_size, disk_cache_dir=None)
    ways = {
        "full 77-token context": lambda: encode_in_batches(backbone, tokens, batch_size, truncate_context=False),
        "truncated per batch (first version)": lambda: encode_in_batches(backbone, tokens, batch_size, True),
        "truncated, grouped by length (now)": lambda: encoder._encode_texts(backbone, subset),
    }
    times = {name: [] for name in ways}
    embeddings = {}
    for _ in range(args.repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            embeddings[name] = F.normalize(way().float(), dim=-1)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    full_name = "full 77-token context"
    print(f"median of {args.repeats} interleaved run(s), seconds:")
    for name, value in medians.items():
        difference = (embeddings[name] - embeddings[full_name]).abs().max().item()
        print(
            f"  {name:<38}{value:8.1f}   RATIO full/this {medians[full_name] / value:5.2f}   "
            f"max abs diff vs full context {difference:.2e}"
        )
    per_prompt = medians[full_name] / len(subset)
    print(
        f"  full context over all {len(prompts)} A-847 prompts, EXTRAPOLATED from the subset: "
        f"{per_prompt * len(prompts) / 60:.0f} min"
    )

    # 2. Whole vocabularies through the model's encoder, cold, from memory, from disk.
    disk_cache = tempfile.mkdtemp(prefix="ita-vocabulary-cache-")
    for name in args.vocabularies:
        class_names = read_vocabulary_file(VOCABULARY_DIR / f"{name}.txt", allow_shared_synonyms=True)

        def new_encoder():
            return ITAVocabularyEncoder(
                templates,
                config.train_vocabulary,
                extra_candidates=config.dominant_category_extra_names,
                batch_size=batch_size,
                disk_cache_dir=disk_cache,
            )

        encoder = new_encoder()
        start = time.perf_counter()
        vocabulary = encoder.encode(backbone, class_names, with_name_embeddings=True)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again = encoder.encode(backbone, class_names, with_name_embeddings=True)
        cached = time.perf_counter() - start
        assert again is vocabulary
        num_prompts = len(vocabulary.synonyms) * len(templates)
        print(
            f"\n{name}: {len(class_names)} classes, {len(vocabulary.synonyms)} synonyms, {num_prompts} prompts + "
            f"{len(vocabulary.candidate_names)} bare names"
        )
        print(
            f"  cold (truncated, grouped by length) {cold:8.1f} s   EXTRAPOLATED full context "
            f"{per_prompt * (num_prompts + len(vocabulary.candidate_names)):8.0f} s"
        )
        print(f"  cached second call {cached * 1e3:.3f} ms = {cached / cold:.2e} of the cold one (target < 1e-2)")
        start = time.perf_counter()
        from_disk = new_encoder().encode(backbone, class_names, with_name_embeddings=True)
        disk = time.perf_counter() - start
        assert torch.equal(from_disk.text_classifier, vocabulary.text_classifier)
        print(
            f"  new encoder (a new process) from the disk cache {disk:.2f} s = {disk / cold:.2e} of the cold one "
            "(cold includes hashing the text tower and writing the file)"
        )


if __name__ == "__main__":
    main()
