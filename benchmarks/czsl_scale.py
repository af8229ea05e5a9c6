"""Open-world CZSL evaluation at C-GQA size on CPU: peak resident memory and time of the standard evaluator (JSON).

    python benchmarks/czsl_scale.py [--scale 1] [--source generated|npy|mmap] [--chunk-size 512] [--out F]

The synthetic test phase has the open-world C-GQA sizes of spec 1.3: 413 attrs x 674 objs = 278362 pairs, 5592 of
them seen, 5098 test images whose pairs are drawn from 888 seen + 923 unseen test pairs. Scores are CLIP-like
(25 + 2 N(0, 1), +1 on seen pairs, +10 on the true pair) and made row by row from the seed, so neither this script
nor the evaluator holds the 5.7 GB float32 matrix; the evaluator gets them as a `ScoreBlocks` source, with the
feasibility filter of spec 2.5.3 ("multiply", random feasibility that keeps the test's unseen pairs, threshold 0.5)
applied per chunk. `--source npy` first writes the matrix to a temporary .npy (block by block, in its own process)
and evaluates `ScoreBlocks.from_npy`, the path for saved score files; `--npy-dtype float64` checks float64 files.
`--source mmap` evaluates the same file through np.load(mmap_mode="r") instead: the pages read stay mapped, so they
count as resident memory (a comparison point for callers that pass memory-mapped matrices).

The evaluation runs alone in a fresh Python process; its peak resident memory (the larger of ru_maxrss and VmHWM)
is what `target_holds` compares with the target, < 4 GB (4e9 bytes) for the whole evaluation. `--scale s` multiplies
the image, attr and obj counts by s (pair counts by about s^2): the tests run it tiny. This parent process imports
neither NumPy nor torch, so nothing of it is counted in the child's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Spec 1.3, C-GQA open world (test phase).
CGQA = {"images": 5098, "attrs": 413, "objs": 674, "seen_pairs": 5592, "test_seen_pairs": 888, "test_unseen_pairs": 923}
TARGET_GB = 4.0  # peak resident memory of the whole open-world evaluation, in 1e9 bytes
SCORE_MEAN, SCORE_STD = 25.0, 2.0  # about 100 x cosine, as CLIP logits (positive, so the multiply filter ranks last)
SEEN_BONUS = 1.0  # models favour seen pairs; this is what the calibration bias undoes
TRUE_BONUS = 10.0  # 5 sd: the true pair often beats the max of 278k noise scores, so the bias sweep has candidates
THRESHOLD = 0.5  # feasibility is uniform on [0, 1) for unseen pairs (half are filtered out), on [0.5, 1) for the
# test's unseen pairs (all kept)
FILTER = "multiply"  # spec 2.5.3, the references' rule


def sizes_at(scale: float) -> dict[str, int]:
    """C-GQA counts scaled: images, attrs and objs by `scale`, pair counts by the pair ratio (a few at least)."""
    if scale <= 0:
        raise ValueError(f"--scale {scale}; expected > 0")
    attrs, objs = max(2, round(CGQA["attrs"] * scale)), max(2, round(CGQA["objs"] * scale))
    pairs = attrs * objs
    ratio = pairs / (CGQA["attrs"] * CGQA["objs"])
    seen = min(max(4, round(CGQA["seen_pairs"] * ratio)), pairs // 2)
    return {
        "images": max(8, round(CGQA["images"] * scale)),
        "attrs": attrs,
        "objs": objs,
        "pairs": pairs,
        "seen_pairs": seen,
        "test_seen_pairs": min(max(2, round(CGQA["test_seen_pairs"] * ratio)), seen),
        "test_unseen_pairs": min(max(2, round(CGQA["test_unseen_pairs"] * ratio)), pairs - seen),
    }


def build_world(sizes: dict[str, int], seed: int):
    """Labels, masks and feasibility of the synthetic open-world test phase, and a row-block score reader.

    Returns (world dict of tensors, read(lo, hi) -> (hi - lo, P) float32 tensor). Row i's scores depend only on
    (seed, i), so any chunking reads the same matrix.
    """
    import torch  # here, not at the top: the parent process stays free of NumPy/torch (see the module docstring)

    n, n_attr, n_obj, p = sizes["images"], sizes["attrs"], sizes["objs"], sizes["pairs"]
    gen = torch.Generator().manual_seed(seed)
    pair_attrs = torch.arange(n_attr).repeat_interleave(n_obj)  # (P,) attr-major, the open-world pair order
    pair_objs = torch.arange(n_obj).repeat(n_attr)  # (P,)
    order = torch.randperm(p, generator=gen)  # (P,)
    seen_idx = order[: sizes["seen_pairs"]].sort().values  # (Ps,)
    seen = torch.zeros(p, dtype=torch.bool)
    seen[seen_idx] = True
    test_pairs = torch.cat(
        [
            seen_idx[torch.randperm(seen_idx.numel(), generator=gen)[: sizes["test_seen_pairs"]]],
            order[sizes["seen_pairs"] :][: sizes["test_unseen_pairs"]],
        ]
    )  # (T,)
    labels = test_pairs[torch.randint(test_pairs.numel(), (n,), generator=gen)]  # (N,)
    labels[0], labels[1] = test_pairs[0], test_pairs[-1]  # at least one seen and one unseen image
    feas = torch.rand(p, generator=gen) * (~seen).float()  # (P,) 0 on seen pairs, as spec 2.5.1 leaves them
    test_unseen = test_pairs[sizes["test_seen_pairs"] :]  # (Tu,)
    feas[test_unseen] = THRESHOLD + (1 - THRESHOLD) * feas[test_unseen]  # kept, as a useful feasibility model does
    world = {"pair_attrs": pair_attrs, "pair_objs": pair_objs, "seen": seen, "labels": labels, "feas": feas}
    row_gen = torch.Generator()

    def read(lo: int, hi: int) -> torch.Tensor:
        out = torch.empty(hi - lo, p)  # (n, P)
        for i in range(lo, hi):
            row_gen.manual_seed(seed * 10_000_019 + 1 + i)  # one stream per row, apart from the world's seed
            torch.randn(p, generator=row_gen, out=out[i - lo])
        out.mul_(SCORE_STD).add_(SCORE_MEAN)
        out[:, seen_idx] += SEEN_BONUS
        out[torch.arange(hi - lo), labels[lo:hi]] += TRUE_BONUS
        return out

    return world, read


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: the larger of ru_maxrss and /proc's VmHWM (Linux, bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return peak
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def rss_bytes() -> int:
    """Current resident memory (VmRSS; the peak so far where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def write_npy(args: argparse.Namespace) -> dict:
    """Worker: write the scaled matrix to args.npy block by block (never whole); returns its seconds and bytes."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sizes = sizes_at(args.scale)
    _, read = build_world(sizes, args.seed)
    n, p = sizes["images"], sizes["pairs"]
    t0 = time.perf_counter()
    with Path(args.npy).open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f,
            {"descr": np.lib.format.dtype_to_descr(np.dtype(args.npy_dtype)), "fortran_order": False, "shape": (n, p)},
        )
        for lo in range(0, n, args.chunk_size):
            read(lo, min(lo + args.chunk_size, n)).numpy().astype(args.npy_dtype, copy=False).tofile(f)
    return {"seconds": time.perf_counter() - t0, "bytes": Path(args.npy).stat().st_size}


def evaluate_world(args: argparse.Namespace) -> dict:
    """Worker: the open-world evaluation on a ScoreBlocks source (generated rows or an .npy file), measured."""
    import numpy as np
    import torch

    from pipeline_lib.czsl.evaluator import ScoreBlocks, evaluate
    from pipeline_lib.czsl.feasibility import feasibility_filter

    torch.set_num_threads(args.threads)
    sizes = sizes_at(args.scale)
    world, generate = build_world(sizes, args.seed)
    n, p = sizes["images"], sizes["pairs"]
    read_seconds = [0.0]
    if args.source == "npy":
        raw = ScoreBlocks.from_npy(args.npy)
    elif args.source == "mmap":  # what the evaluator does with an np.load(mmap_mode="r") matrix, chunk by chunk
        mapped = np.load(args.npy, mmap_mode="r")
        raw = ScoreBlocks(mapped.shape, lambda lo, hi: np.array(mapped[lo:hi], dtype=np.float32, copy=True))
    else:
        raw = ScoreBlocks((n, p), generate)
    if raw.shape != (n, p):
        raise ValueError(f"{args.npy} has shape {raw.shape}; expected {(n, p)}")

    def timed_read(lo: int, hi: int):
        t = time.perf_counter()
        block = raw.read(lo, hi)
        read_seconds[0] += time.perf_counter() - t
        return block

    seen, labels = world["seen"], world["labels"]
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    metrics = evaluate(
        ScoreBlocks((n, p), timed_read),
        world["pair_attrs"][labels],
        world["pair_objs"][labels],
        labels,
        world["pair_attrs"],
        world["pair_objs"],
        seen,
        torch.ones(p, dtype=torch.bool),  # open world: every pair is a candidate
        chunk_size=args.chunk_size,
        device="cpu",
        column_transform=feasibility_filter(world["feas"], seen, THRESHOLD, FILTER),
    )
    seconds = time.perf_counter() - t0
    n_seen_images = int(seen[labels].sum())
    return {
        "sizes": {
            **sizes,
            "seen_images": n_seen_images,
            "unseen_images": n - n_seen_images,
            "matrix_gb_float32": round(n * p * 4 / 1e9, 3),
        },
        "seconds": {
            "evaluate": round(seconds, 2),
            "read_scores": round(read_seconds[0], 2),
            "evaluate_without_reads": round(seconds - read_seconds[0], 2),
        },
        "memory": {
            "peak_rss_gb": round(peak_rss_bytes() / 1e9, 3),
            "rss_before_evaluate_gb": round(rss_before / 1e9, 3),
        },
        "metrics": {
            **{k: round(v, 6) for k, v in metrics.summary().items()},
            "n_biases": len(metrics.biases),
            "n_seen": metrics.n_seen,
            "n_unseen": metrics.n_unseen,
        },
        "torch": torch.__version__,
    }


def _worker(args: argparse.Namespace, task: str, timeout: float) -> dict:
    """Run `task` in a fresh interpreter (so its peak memory is its own); return the JSON it prints last."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        task,
        "--scale",
        str(args.scale),
        "--seed",
        str(args.seed),
        "--chunk-size",
        str(args.chunk_size),
        "--threads",
        str(args.threads),
        "--source",
        args.source,
        "--npy-dtype",
        args.npy_dtype,
    ]
    if args.npy:
        cmd += ["--npy", str(args.npy)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {task} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    """The benchmark: optional .npy write, then the measured evaluation, both in their own processes."""
    t0 = time.perf_counter()
    written = None
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        if args.source in ("npy", "mmap"):
            args.npy = Path(tmp) / "scores.npy"
            written = _worker(args, "write", args.timeout)
        result = _worker(args, "evaluate", args.timeout)
    result["seconds"]["total_with_processes"] = round(time.perf_counter() - t0, 2)
    if written is not None:
        result["seconds"]["write_npy"] = round(written["seconds"], 2)
        result["npy_gb"] = round(written["bytes"] / 1e9, 3)
    peak = result["memory"]["peak_rss_gb"]
    return {
        "benchmark": "czsl_scale",
        "what": "open-world CZSL evaluation (score blocks + feasibility filter + bias sweep, AUC, HM) on CPU",
        "scale": args.scale,
        "full_size": args.scale == 1,
        "source": args.source if args.source == "generated" else f"{args.source}:{args.npy_dtype}",
        "chunk_size": args.chunk_size,
        "threads": args.threads,
        "seed": args.seed,
        "filter": FILTER,
        "threshold": THRESHOLD,
        **result,
        "target_gb": TARGET_GB,
        "target_holds": peak < TARGET_GB,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = C-GQA open world (5098 x 278362)")
    parser.add_argument("--source", choices=("generated", "npy", "mmap"), default="generated")
    parser.add_argument("--npy-dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--chunk-size", type=int, default=512, help="evaluator rows per chunk (its default)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where --source npy writes its temporary file")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--worker", choices=("write", "evaluate"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--npy", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        sys.path.insert(0, str(REPO))
        out = write_npy(args) if args.worker == "write" else evaluate_world(args)
        print(json.dumps(out))
        return
    result = run(args)
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
