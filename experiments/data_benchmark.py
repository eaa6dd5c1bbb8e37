"""Host input throughput and memory of the streaming path (ssl_jax.data.streaming).

Generates its own data in a temporary directory (deleted afterwards) and prints
figures; the recorded output lives in docs/benchmarks/data_cpu_<date>.txt.

  python experiments/data_benchmark.py                        # every section
  python experiments/data_benchmark.py --sections=throughput --images=2000 --repeats=3
  python experiments/data_benchmark.py --sections=memory --memory_sizes=5000,100000

Sections:
- throughput: decode + random-resized crop (scale (0.08, 1), 224 px) + flip of
  the same ~500x375 quality-90 JPEGs (smooth random colour fields plus noise,
  ~70 kB each), images/s PER CORE, ours next to torchvision's ImageFolder +
  DataLoader (RandomResizedCrop(224), RandomHorizontalFlip, PILToTensor: uint8)
  when torch is importable. "Per core" is measured two ways: (a) the whole
  process tree pinned to ONE core (sched_setaffinity, inherited by the
  workers) with one worker; (b) N workers on N cores, divided by N. The
  single-image functions alone (one core, no loader) are timed too.
- mapping: one grain element per global step (what streaming does) against one
  element per example batched in the main process: images/s and the main
  process's CPU seconds per batch.
- draft: JPEG draft mode on/off for small and large photos and two crop sizes.
- memory: peak RSS of the whole process tree (main + grain workers) while
  reading 50 steps of batch 64 from 5,000 vs 100,000 records (96-128 px JPEGs:
  a pool of 2,000 distinct files cycled), and the writer's peak RSS.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax import prepare  # noqa: E402
from ssl_jax.data import decode, pipeline, record_transforms, records, streaming  # noqa: E402

CROP = decode.CropSpec(224, scale=(0.08, 1.0))


# ----------------------------------------------------------------------------- data


def photo_jpeg(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: a smooth random colour field plus sensor-like noise."""
    small = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    pixels = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    pixels += rng.normal(0.0, 10.0, pixels.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_folder(root: str, count: int, classes: int = 10) -> None:
    """root/train/c<k>/<i>.jpg (count photos) and a one-image test split (prepare needs one)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        directory = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{i:06d}.jpg"), "wb") as f:
            f.write(photo_jpeg(rng, 500, 375))
    os.makedirs(os.path.join(root, "test", "c0"), exist_ok=True)
    shutil.copy(os.path.join(root, "train", "c0", "000000.jpg"), os.path.join(root, "test", "c0"))


# ----------------------------------------------------------------------------- timing helpers


def pinned(core: int | None):
    """Context: this process (and children started inside) on one core, or unchanged."""

    class _Pin:
        def __enter__(self):
            self.saved = os.sched_getaffinity(0)
            if core is not None:
                os.sched_setaffinity(0, {core})

        def __exit__(self, *exc):
            os.sched_setaffinity(0, self.saved)

    return _Pin()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except OSError:
        return 0.0


def _run_and_wait_seconds(pid: int) -> tuple[float, float]:
    """Seconds the threads of `pid` ran, and waited runnable for a CPU (/proc schedstat)."""
    run = wait = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ran, waited, _ = f.read().split()
            run, wait = run + int(ran), wait + int(waited)
    except OSError:
        pass
    return run / 1e9, wait / 1e9


def time_batches(batches, count: int, batch_size: int, warmup: int) -> dict[str, float]:
    """Rates over `count` batches after `warmup` ones.

    The warm-up covers the workers' start (a worker may start seconds after
    another) and drains what they buffered meanwhile (both loaders buffer 2
    batches per worker), so the timed window sees the steady producing rate.
    Returns images/s (wall clock), the main process's CPU ms per batch,
    images per CPU-second of the whole process tree (main + workers): the
    per-core figure that other jobs on a shared machine do not distort, and
    the share of their runnable time the workers spent waiting for a CPU.
    """
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    pids = _tree_pids(os.getpid())
    workers = [pid for pid in pids if pid != os.getpid()]
    before = {pid: _cpu_seconds(pid) for pid in pids}
    sched = {pid: _run_and_wait_seconds(pid) for pid in workers}
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    seconds = time.perf_counter() - start
    used = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
    ran = waited = 0.0
    for pid in workers:
        run, wait = _run_and_wait_seconds(pid)
        ran, waited = ran + run - sched[pid][0], waited + wait - sched[pid][1]
    return {
        "images_per_s": count * batch_size / seconds,
        "main_cpu_ms_per_batch": 1e3 * used[os.getpid()] / count,
        "images_per_cpu_s": count * batch_size / sum(used.values()),
        "workers_wait_percent": 100 * waited / max(ran + waited, 1e-9),
    }


def ours_loader(spec: str, batch_size: int, workers: int):
    ds = streaming.StreamingDataset(spec, "train")
    return ds.host_batches(
        batch_size=batch_size,
        seed=0,
        transform=record_transforms.crop_transform([CROP]),
        num_workers=workers,
    )


def torch_loader(root: str, batch_size: int, workers: int):
    import torch
    from torchvision import datasets as tv_datasets
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),  # uint8, as ours.
        ]
    )
    folder = tv_datasets.ImageFolder(os.path.join(root, "train"), transform=transform)
    return torch.utils.data.DataLoader(
        folder, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )


def _run_loader(make, count, batch_size, workers) -> dict[str, float]:
    iterator = iter(make())
    try:
        return time_batches(iterator, count, batch_size, warmup=2 * workers + 2)
    finally:
        close = getattr(iterator, "close", None) or getattr(iterator, "_shutdown_workers", None)
        if close:
            close()


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f}  (runs: {', '.join(f'{v:.0f}' for v in values)})"


# ----------------------------------------------------------------------------- sections


def throughput(args, root: str, spec: str, have_torch: bool) -> None:
    print("\n== throughput: decode + RandomResizedCrop(224, scale (0.08, 1)) + flip, uint8 out")
    source = records.open_source(spec, "train")
    jpegs = [source[i]["image"] for i in range(min(len(source), 300))]
    kilobytes = np.mean([len(j) for j in jpegs]) / 1e3
    print(
        f"{len(source)} JPEGs of 500x375, quality 90, mean {kilobytes:.0f} kB; batch "
        f"{args.batch_size}; medians of {args.repeats} runs, ours and torchvision alternating"
    )

    functions = {
        "ours: decode.random_resized_crop": lambda i, jpeg: decode.random_resized_crop(
            jpeg, CROP, np.random.default_rng(i)
        )
    }
    if have_torch:
        from torchvision import transforms

        tv = transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.PILToTensor(),
            ]
        )
        functions["torchvision: PIL open+convert, RRC, flip, PILToTensor"] = lambda i, jpeg: tv(
            Image.open(io.BytesIO(jpeg)).convert("RGB")
        )
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    with pinned(args.core):
        for _ in range(args.repeats):
            for name, fn in functions.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                for i, jpeg in enumerate(jpegs):
                    fn(i, jpeg)
                wall[name].append(len(jpegs) / (time.perf_counter() - start))
                cpu[name].append(len(jpegs) / (time.process_time() - start_cpu))
    print("single image, no loader, one core: images/s (wall) and images per CPU-second:")
    for name in functions:
        print(f"  {name:56s} wall {_median(wall[name])}")
        print(f"  {'':56s} cpu  {_median(cpu[name])}")

    loaders = {"ours (grain, host_batches)": lambda w: ours_loader(spec, args.batch_size, w)}
    if have_torch:
        loaders["torchvision ImageFolder + DataLoader"] = lambda w: torch_loader(
            root, args.batch_size, w
        )
    else:
        print("torch is not importable: torchvision comparison skipped")
    workers = args.workers
    for title, count, core in [
        ("1 worker, whole process tree pinned to 1 core", 1, args.core),
        (f"{workers} workers on all cores", workers, None),
    ]:
        runs = {name: [] for name in loaders}
        with pinned(core):
            for _ in range(args.repeats):
                for name, make in loaders.items():
                    runs[name].append(
                        _run_loader(
                            functools.partial(make, count), args.batches, args.batch_size, count
                        )
                    )
        print(f"loader, {title}:")
        per_core = {}
        for name, results in runs.items():
            wall = [r["images_per_s"] / count for r in results]
            cpu = [r["images_per_cpu_s"] for r in results]
            per_core[name] = (statistics.median(wall), statistics.median(cpu))
            print(f"  {name:56s} wall images/s / {count} {_median(wall)}")
            print(f"  {'':56s} images per CPU-second  {_median(cpu)}")
        if have_torch:
            (ours_wall, ours_cpu), (tv_wall, tv_cpu) = per_core.values()
            print(
                f"  ours / torchvision per core: {ours_wall / tv_wall:.2f}x (wall), "
                f"{ours_cpu / tv_cpu:.2f}x (CPU time)"
            )


def _example(slot, *, source, transform, batch_size, seed):
    """Per-example mapping (the alternative to streaming's per-step batches)."""
    step, row = divmod(slot, batch_size)
    index = int(pipeline.batch_indices(len(source), batch_size, seed, step)[row])
    out, label = streaming._load(source, transform, index, [seed, step, row])
    return {**out, "label": np.int32(label)}


def per_example_loader(spec: str, batch_size: int, workers: int):
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (see streaming._pipeline).
        flags.FLAGS.mark_as_parsed()

    source = records.open_source(spec, "train")
    load = functools.partial(
        _example,
        source=source,
        transform=record_transforms.crop_transform([CROP]),
        batch_size=batch_size,
        seed=0,
    )
    dataset = (
        grain.MapDataset.range(0, 2**62)
        .map(load)
        .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        .mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2 * batch_size)
        )
        .batch(batch_size)
    )
    return iter(dataset)


def mapping(args, spec: str) -> None:
    print(f"\n== mapping: one grain element per step vs per example ({args.workers} workers)")
    variants = {
        "per step (streaming.host_batches)": lambda: ours_loader(
            spec, args.batch_size, args.workers
        ),
        "per example, batched in the main process": lambda: per_example_loader(
            spec, args.batch_size, args.workers
        ),
    }
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            runs[name].append(_run_loader(make, args.batches, args.batch_size, args.workers))
    for name, results in runs.items():
        print(
            f"  {name:44s} images/s (wall)          {_median([r['images_per_s'] for r in results])}"
        )
        print(
            f"  {'':44s} images per CPU-second    "
            f"{_median([r['images_per_cpu_s'] for r in results])}"
        )
        print(
            f"  {'':44s} main-process CPU ms/batch "
            f"{_median([r['main_cpu_ms_per_batch'] for r in results])}"
        )
        print(
            f"  {'':44s} % of workers' runnable time waiting for a CPU "
            f"{_median([r['workers_wait_percent'] for r in results])}"
        )


def draft(args) -> None:
    print("\n== draft: JPEG draft mode (decode at 1/2, 1/4, 1/8 when every crop keeps its size)")
    rng = np.random.default_rng(1)
    cases = [
        ((500, 375), decode.CropSpec(224)),
        ((500, 375), decode.CropSpec(96, scale=(0.05, 0.4))),
        ((1600, 1200), decode.CropSpec(224)),
        ((1600, 1200), decode.CropSpec(96, scale=(0.05, 0.4))),
    ]
    with pinned(args.core):
        for (w, h), spec in cases:
            jpegs = [photo_jpeg(rng, w, h) for _ in range(40)]
            rates = {False: [], True: []}
            for _ in range(args.repeats):
                for use in (False, True):
                    start = time.process_time()  # CPU time: other jobs do not distort it.
                    for i, jpeg in enumerate(jpegs):
                        decode.crops(jpeg, [spec], np.random.default_rng(i), draft=use)
                    rates[use].append(len(jpegs) / (time.process_time() - start))
            diffs = [
                np.abs(
                    decode.crops(j, [spec], np.random.default_rng(i), draft=False)[0].astype(int)
                    - decode.crops(j, [spec], np.random.default_rng(i), draft=True)[0]
                ).mean()
                for i, j in enumerate(jpegs)
            ]
            full, fast = statistics.median(rates[False]), statistics.median(rates[True])
            print(
                f"  {w}x{h} -> {spec.size} px scale {spec.scale}: images per CPU-s full "
                f"{full:4.0f}, draft {fast:4.0f} ({fast / full:.2f}x); mean |diff| "
                f"{np.mean(diffs):.2f} levels (max over images {np.max(diffs):.2f})"
            )


# ----------------------------------------------------------------------------- memory


def _tree_pids(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_write(directory: str, count: int, test_count: int = 0) -> None:
    """Writes `count` records of 96-128 px JPEGs (a pool of 2,000 cycled), and
    a test split of `test_count` when a training run needs one."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(96, 129, (2000, 2))
    pool = [photo_jpeg(rng, int(w), int(h)) for w, h in sizes]
    start = time.perf_counter()
    splits = {"train": count, **({"test": test_count} if test_count else {})}
    examples = {
        split: (records.Example(f"{i}", pool[i % len(pool)], i % 100) for i in range(n))
        for split, n in splits.items()
    }
    records.write_records(
        directory, examples, num_classes=100, examples_per_shard=1024, overwrite=True
    )
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec.
    peak_mb = _status_kb(os.getpid(), "VmHWM") / 1024
    disk_mb = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)) / 1e6
    print(
        f"write {count}: {time.perf_counter() - start:.1f} s, {disk_mb:.0f} MB on disk, "
        f"writer peak RSS {peak_mb:.0f} MB"
    )


def memory_read(directory: str, steps: int, batch_size: int, workers: int) -> None:
    ds = streaming.StreamingDataset(f"arrayrecord:{directory}", "train")
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            total = sum(_status_kb(p, "VmRSS") for p in _tree_pids(os.getpid()))
            peak[0] = max(peak[0], total)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    batches = ds.host_batches(
        batch_size=batch_size,
        seed=0,
        transform=record_transforms.crop_transform([decode.CropSpec(96)]),
        num_workers=workers,
    )
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    pids = _tree_pids(os.getpid())
    hwm = sum(_status_kb(p, "VmHWM") for p in pids)
    done.set()
    sampler.join()
    batches.close()
    print(
        f"read {ds.num_examples}: {steps} steps x {batch_size} in {seconds:.1f} s, "
        f"{len(pids)} processes; peak of summed VmRSS {peak[0] / 1024:.0f} MB, "
        f"sum of per-process VmHWM {hwm / 1024:.0f} MB"
    )


def memory(args, workdir: str) -> None:
    print(
        f"\n== memory: {args.memory_steps} steps x batch {args.batch_size} "
        f"(crop 96 px), {args.workers} workers; each phase in a fresh process"
    )
    for count in args.memory_sizes:
        directory = os.path.join(workdir, f"mem{count}")
        for phase in (["--phase=write", f"--count={count}"], ["--phase=read"]):
            command = [sys.executable, os.path.abspath(__file__), *phase, f"--dir={directory}"]
            command += [f"--memory_steps={args.memory_steps}", f"--batch_size={args.batch_size}"]
            command += [f"--workers={args.workers}"]
            result = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            print("  " + ("\n  ".join(lines) if result.returncode == 0 else result.stderr[-2000:]))
        shutil.rmtree(directory)


def train_memory(args, workdir: str) -> None:
    """Peak host RSS of a real training run (`python -m ssl_jax.main`, SimCLR
    runlocal on the records, host crops on `--workers` processes), summed over
    its process tree, sampled every 20 ms until `--memory_steps` steps are
    logged; then the run is stopped with SIGTERM (it checkpoints and exits)."""
    print(
        f"\n== training memory: {args.memory_steps} steps of SimCLR runlocal, batch "
        f"{args.batch_size}, {args.workers} workers; process tree of python -m ssl_jax.main"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for count in args.memory_sizes:
        directory = os.path.join(workdir, f"train{count}")
        command = [sys.executable, os.path.abspath(__file__), "--phase=write", f"--count={count}"]
        command += [f"--dir={directory}", "--test_count=200"]
        subprocess.run(command, check=True, capture_output=True)
        run_dir = os.path.join(workdir, f"run{count}")
        main_command = [
            sys.executable,
            "-m",
            "ssl_jax.main",
            f"--config=configs/simclr.py:runlocal,dataset=arrayrecord:{directory}",
            f"--workdir={run_dir}",
            f"--config.train_steps={args.memory_steps * 10}",
            f"--config.batch_size={args.batch_size}",
            f"--config.input.workers={args.workers}",
            "--config.eval_every=0",  # the training alone: no periodic kNN over the records
        ]
        process = subprocess.Popen(
            main_command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        metrics, peak, start = os.path.join(run_dir, "metrics.jsonl"), 0, time.perf_counter()
        while process.poll() is None:
            peak = max(peak, sum(_status_kb(p, "VmRSS") for p in _tree_pids(process.pid)))
            if os.path.exists(metrics):
                with open(metrics) as f:
                    if sum(1 for _ in f) >= args.memory_steps:
                        break
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        process.send_signal(signal.SIGTERM)
        process.wait()
        print(
            f"  {count} records: peak of summed VmRSS {peak / 1024:.0f} MB over "
            f"{args.memory_steps} steps ({seconds:.0f} s with start-up and compilation)"
        )
        shutil.rmtree(directory)
        shutil.rmtree(run_dir)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="throughput,mapping,draft,memory,train_memory")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12, help="Timed batches per run.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--core", type=int, default=0, help="Core for one-core timings.")
    parser.add_argument("--memory_sizes", default="5000,100000")
    parser.add_argument("--memory_steps", type=int, default=50)
    parser.add_argument("--workdir", default=None, help="Default: a temporary directory.")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--test_count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "write":
        return memory_write(args.dir, args.count, args.test_count)
    if args.phase == "read":
        return memory_read(args.dir, args.memory_steps, args.batch_size, args.workers)
    args.memory_sizes = [int(s) for s in args.memory_sizes.split(",")]
    if (2 * args.workers + 2 + args.batches) * args.batch_size > args.images:
        parser.error("--images must cover the warm-up and timed batches of one torch epoch.")
    sections = args.sections.split(",")

    import importlib.metadata

    versions = {}
    for package in ("grain", "array-record", "pillow", "torch", "torchvision"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    print("$ python experiments/data_benchmark.py " + " ".join(sys.argv[1:]))
    print(
        f"host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machine); "
        f"python {sys.version.split()[0]}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    workdir = tempfile.mkdtemp(dir=args.workdir, prefix="data_benchmark-")
    try:
        root, spec = os.path.join(workdir, "folder"), None
        if {"throughput", "mapping"} & set(sections):
            start = time.perf_counter()
            make_folder(root, args.images)
            out = os.path.join(workdir, "records")
            prepare.prepare(f"imagefolder:{root}", out, threads=args.workers)
            spec = f"arrayrecord:{out}"
            print(
                f"generated and prepared {args.images} JPEGs in {time.perf_counter() - start:.0f} s"
            )
        if "throughput" in sections:
            throughput(args, root, spec, have_torch)
        if "mapping" in sections:
            mapping(args, spec)
        if "draft" in sections:
            draft(args)
        if "memory" in sections:
            memory(args, workdir)
        if "train_memory" in sections:
            train_memory(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
