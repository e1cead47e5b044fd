"""Data at scale (issue 22): corpus size -> token-shard preparation (cold, warm) and loader cost.

    python benchmarks/data_scale.py --sizes 5,25,100 --num-proc 2      # MB of text; `make bench-data`

For each size: a seeded synthetic corpus of non-duplicate ~2 KB documents (JSONL, words drawn from a Zipf-like
vocabulary of 20k made-up words, so every document is distinct), then, each in a fresh subprocess:
- cold preparation: `lmlab.data.shards.prepare` into an empty directory (read, hash split, exact dedupe, tokenize
  with `--num-proc` workers, write shards); wall time and peak RSS of the process and of its workers;
- warm preparation: the same call again (the cache is found by its corpus fingerprint);
- the loader alone: `PackedBlocks` over the memory-mapped train shards, `ElasticBlockSampler` order, batches of
  `--batch-size` x `--block` tokens collated as int64 tensors, for `--loader-seconds`; tokens/s and peak RSS.
The tokenizer is a 4096-token byte-level BPE trained once on the first 2 MB of the 5 MB corpus (cached under the
output directory; its training is not timed). Peak RSS is the process's VmHWM and its workers' ru_maxrss; the
loader's anonymous memory (RssAnon) is reported beside its RSS, which counts the shard pages it touched.
Results: a markdown table on stdout and JSON in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {src!r})
os.environ["TOKENIZERS_PARALLELISM"] = "false"
mode, corpus, root, tok_path, num_proc = {mode!r}, {corpus!r}, {root!r}, {tok!r}, {num_proc}
from tokenizers import Tokenizer
tok = Tokenizer.from_file(tok_path)
eos = tok.token_to_id("<|endoftext|>")
def tokenize(texts):
    return [e.ids + [eos] for e in tok.encode_batch(texts, add_special_tokens=False)]
from lmlab.data.shards import prepare
t0 = time.perf_counter()
shards = prepare(corpus, root, tokenize=tokenize, vocab_size=tok.get_vocab_size(), identity={{"bpe": tok_path}},
                 fractions={{"train": 0.98, "val": 0.01, "test": 0.01}}, num_proc=num_proc)
prep = time.perf_counter() - t0
keys = ("docs", "tokens", "dtype", "shards")
out = {{"prep_s": prep, "built": shards.built, "manifest": {{k: shards.manifest[k] for k in keys}}}}
if mode == "loader":
    import numpy as np, torch
    from lmlab.data.packed import ElasticBlockSampler, PackedBlocks
    blocks = PackedBlocks(shards.split("train"), {block}, keep_partial=False)
    sampler = ElasticBlockSampler(len(blocks), {batch}, seed=0)
    def order():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from iter(sampler)
            epoch += 1
    tokens, t0, it = 0, time.perf_counter(), order()
    while time.perf_counter() - t0 < {seconds}:
        idx = [next(it) for _ in range({batch})]
        batch = torch.from_numpy(np.stack([blocks[i]["input_ids"] for i in idx]).astype(np.int64))
        tokens += batch.numel()
    out["loader_tokens_per_s"] = tokens / (time.perf_counter() - t0)
out["bytes"] = sum(f.stat().st_size for f in shards.directory.iterdir())
# VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss over exec, so a child of a big process (pytest) would report
# its parent's peak; VmHWM belongs to this process's own address space.
status = open("/proc/self/status").read().splitlines()
self_rss = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
# RssAnon now: the loader's own memory, without the shard pages it touched (page cache, shared, reclaimable)
anon = next(int(l.split()[1]) for l in status if l.startswith("RssAnon:")) / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
out.update(rss_mib=self_rss, workers_rss_mib=kids, anon_mib=anon)
print("RESULT " + json.dumps(out))
"""


def generate(path: Path, megabytes: float, seed: int = 0) -> None:
    """Seeded, non-duplicate ~2 KB documents of made-up words (Zipf-like frequencies)."""
    if path.is_file() and path.stat().st_size >= megabytes * 1e6 * 0.99:
        return
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vi", "so", "pe", "du", "ga", "zo", "ri", "fa", "be", "xu"]
    vocab = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    target = int(megabytes * 1e6)
    written = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        n = 0
        while written < target:
            words = rng.choices(vocab, weights, k=330)
            line = json.dumps({"id": n, "text": f"doc {n}: " + " ".join(words) + "."}) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    os.replace(tmp, path)


def train_tokenizer(corpus: Path, out: Path) -> Path:
    if out.is_file():
        return out
    from tokenizers import ByteLevelBPETokenizer

    texts, size = [], 0
    with open(corpus) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(line)
            if size > 2e6:
                break
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=4096, min_frequency=2, special_tokens=["<|endoftext|>"])
    bpe.save(str(out))
    return out


def child(mode: str, corpus: Path, root: Path, tok: Path, args: argparse.Namespace) -> dict:
    code = _CHILD.format(
        src=str(ROOT / "src"),
        mode=mode,
        corpus=str(corpus),
        root=str(root),
        tok=str(tok),
        num_proc=args.num_proc,
        block=args.block,
        batch=args.batch_size,
        seconds=args.loader_seconds,
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["process_wall_s"] = wall
    return result


def end_to_end(corpus: Path, work: Path, model: str, steps: int, num_proc: int) -> list[dict]:
    """The issue's acceptance run: `train.py task=causal_lm dataset=files` on `corpus` under `/usr/bin/time -v`,
    cold (an empty LMLAB_CACHE_DIR: BPE, shards, near-copy search) then warm (the same cache)."""
    cache = work / f"e2e-cache-{corpus.stem}"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    rows = []
    for phase in ("cold", "warm"):
        run_dir = work / f"e2e-{corpus.stem}-{phase}"
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        command = [
            "/usr/bin/time", "-v", sys.executable, str(ROOT / "train.py"), "task=causal_lm", "dataset=files",
            f"dataset.source.path={corpus}", f"model={model}", f"trainer.max_steps={steps}",
            f"dataset.num_proc={num_proc}", "dataset.fractions={train: 0.98, val: 0.01, test: 0.01}",
            "dataset.val_tokens=200000", "dataset.test_tokens=200000", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = {**os.environ, "LMLAB_CACHE_DIR": str(cache)}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"end-to-end {phase} run failed:\n{proc.stderr[-3000:]}")
        timed = dict(
            line.strip().rsplit(": ", 1) for line in proc.stderr.splitlines() if line.startswith("\t") and ": " in line
        )
        metrics = json.loads((run_dir / "metrics.json").read_text())
        h, m, sec = ([0] + timed["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"))[-3:]
        rows.append(
            {
                "corpus": corpus.name,
                "phase": phase,
                "wall_s": int(h) * 3600 + int(m) * 60 + float(sec),
                "first_batch_s": metrics["perf/time_to_first_batch_s"],
                "peak_rss_mib": int(timed["Maximum resident set size (kbytes)"]) / 1024,
                "train_anon_rss_mib": metrics.get("perf/train_anon_rss_mb"),
                "train_tokens_per_s": metrics["perf/train_tokens_per_sec"],
                "test_bpb": metrics["test/bpb"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,25,100", help="MB of text, comma-separated")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-seconds", type=float, default=5.0)
    parser.add_argument("--work", type=Path, default=ROOT / "logs" / "bench" / "data_scale")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "bench" / "data_scale.json")
    parser.add_argument("--train-sizes", default="", help="MB: also run train.py end to end on these (cold, warm)")
    parser.add_argument("--train-model", default="llama_small")
    parser.add_argument("--train-steps", type=int, default=50)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    generate(args.work / "corpus-5MB.jsonl", 5)
    tok = train_tokenizer(args.work / "corpus-5MB.jsonl", args.work / "bpe-4096.json")
    load = os.getloadavg()
    rows = []
    for size in sizes:
        corpus = args.work / f"corpus-{size:g}MB.jsonl"
        generate(corpus, size)
        root = args.work / f"shards-{size:g}MB"
        if root.exists():
            subprocess.run(["rm", "-rf", str(root)], check=True)
        cold = child("prep", corpus, root, tok, args)
        warm = child("loader", corpus, root, tok, args)
        assert cold["built"] and not warm["built"]
        rows.append(
            {
                "mb": size,
                "text_bytes": corpus.stat().st_size,
                "tokens": sum(cold["manifest"]["tokens"].values()),
                "cold_prep_s": cold["prep_s"],
                "cold_process_s": cold["process_wall_s"],
                "cold_rss_mib": cold["rss_mib"],
                "cold_workers_rss_mib": cold["workers_rss_mib"],
                "warm_prep_s": warm["prep_s"],
                "loader_rss_mib": warm["rss_mib"],
                "loader_anon_mib": warm["anon_mib"],
                "shard_bytes": cold["bytes"],
                "loader_tokens_per_s": warm["loader_tokens_per_s"],
                "dtype": cold["manifest"]["dtype"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "loadavg_before": load,
        "loadavg_after": os.getloadavg(),
        "num_proc": args.num_proc,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta}\n")
    print(
        "| text | tokens | cold prep wall (process) | cold peak RSS main / workers | warm prep | loader RSS (anon) "
        "| shard bytes | loader tokens/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mb']:g} MB | {r['tokens'] / 1e6:.1f}M | {r['cold_prep_s']:.1f} s ({r['cold_process_s']:.1f} s) | "
            f"{r['cold_rss_mib']:.0f} / {r['cold_workers_rss_mib']:.0f} MiB | {r['warm_prep_s']:.2f} s | "
            f"{r['loader_rss_mib']:.0f} ({r['loader_anon_mib']:.0f}) MiB | {r['shard_bytes'] / 1e6:.1f} MB | "
            f"{r['loader_tokens_per_s'] / 1e6:.1f}M |"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        exponent = math.log(b["cold_prep_s"] / a["cold_prep_s"]) / math.log(b["mb"] / a["mb"])
        print(f"\ngrowth exponent of cold prep wall: {exponent:.2f}")
    e2e = []
    for size in [float(s) for s in args.train_sizes.split(",") if s]:
        corpus = args.work / f"corpus-{size:g}MB.jsonl"
        generate(corpus, size)
        e2e += end_to_end(corpus, args.work, args.train_model, args.train_steps, args.num_proc)
    if e2e:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "end_to_end": e2e}, indent=1))
        print(f"\n`train.py task=causal_lm model={args.train_model} trainer.max_steps={args.train_steps}` end to end:")
        print("| corpus | phase | wall | first batch | peak RSS (time -v) | train RssAnon | train tok/s | test/bpb |")
        print("|---|---|---|---|---|---|---|---|")
        for r in e2e:
            print(
                f"| {r['corpus']} | {r['phase']} | {r['wall_s']:.0f} s | {r['first_batch_s']:.1f} s | "
                f"{r['peak_rss_mib']:.0f} MiB | {r['train_anon_rss_mib']:.0f} MiB | {r['train_tokens_per_s']:.0f} | "
                f"{r['test_bpb']:.4f} |"
            )


if __name__ == "__main__":
    main()
