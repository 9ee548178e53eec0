"""How fast the synthetic benchmark is made and read, on one CPU core.

For each domain, `harness.data.synthetic.generate` writes N images at WIDTHxHEIGHT into a temporary
folder, end to end (render, PNG encoding, class statistics, content hash, atomic rename); then the
same images are rendered in memory only, and read back through `SegDataset` (decode, random crop,
flip). The process is pinned to one core (`sched_setaffinity`) and numbers are reported both as wall
time and as this process's CPU time: on a shared machine the CPU-time rate is what one core delivers,
the wall-time rate what you saw. Repeats are interleaved; the median is reported.

    .venv/bin/python benchmarks/bench_data.py --images 300 --repeats 3

prints a Markdown table and writes JSON (default reports/bench_data.json, written atomically).

    .venv/bin/python benchmarks/bench_data.py --gap-curve runs/source_only/checkpoint --gaps 0,0.5,1

instead scores a trained checkpoint (e.g. source_only) on `target` validation images rendered in
memory at each `synth.gap` (resized like the checkpoint's `data.val`): how far the domain gap lever
moves a source-trained model, without generating or training anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="images per domain and repeat (default 300)")
    ap.add_argument("--size", default="256x128", help="WIDTHxHEIGHT (default 256x128)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the last allowed one)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_data.json"))
    ap.add_argument("--gap-curve", metavar="CHECKPOINT", help="score CHECKPOINT on targets at each --gaps")
    ap.add_argument("--gaps", default="0,0.25,0.5,0.55,0.6,0.75,1")
    ap.add_argument("--eval-images", type=int, default=100, help="target val images per gap (default 100)")
    args = ap.parse_args(argv)
    if args.gap_curve:
        return gap_curve(args.gap_curve, [float(g) for g in args.gaps.split(",")], args.eval_images)

    allowed = sorted(os.sched_getaffinity(0))
    core = args.core if args.core is not None else allowed[-1]
    os.sched_setaffinity(0, {core})
    from harness.env import offline

    offline()
    import torch

    torch.set_num_threads(1)
    from harness.config import DatasetConfig
    from harness.data.dataset import build_dataset
    from harness.data.synthetic import DOMAINS, SynthParams, generate, render_index, resolve_styles

    width, height = (int(x) for x in args.size.lower().split("x"))
    n = args.images
    styles = resolve_styles()
    rows: dict[str, dict[str, list[float]]] = {d: {} for d in DOMAINS}

    def add(domain: str, key: str, seconds: float) -> None:
        rows[domain].setdefault(key, []).append(n / seconds)

    with tempfile.TemporaryDirectory(prefix="udabench-bench-data-") as tmp:
        render_index(styles, SynthParams(width=width, height=height), "target", "warm", 0)  # noise banks
        for r in range(args.repeats):
            for domain in DOMAINS:
                params = SynthParams(seed=r, width=width, height=height, splits={domain: {"train": n}})
                out = Path(tmp) / f"{domain}-{r}"
                wall, cpu = timed(lambda params=params, out=out: generate(params, out))
                add(domain, "generate_wall", wall)
                add(domain, "generate_cpu", cpu)
                _, cpu = timed(lambda params=params, domain=domain: [
                    render_index(styles, params, domain, "train", i) for i in range(n)])
                add(domain, "render_cpu", cpu)
                ds = build_dataset(DatasetConfig(root=str(out), domain=domain), crop=(128, 128), flip=0.5)
                _, cpu = timed(lambda ds=ds: [ds[i] for i in range(len(ds))])
                add(domain, "read_cpu", cpu)

    med = {d: {k: statistics.median(v) for k, v in cols.items()} for d, cols in rows.items()}
    total_cpu = len(DOMAINS) / sum(1 / med[d]["generate_cpu"] for d in DOMAINS)
    total_wall = len(DOMAINS) / sum(1 / med[d]["generate_wall"] for d in DOMAINS)
    print(f"synthetic benchmark at {width}x{height}, one core (cpu {core}), {n} images per domain, "
          f"median of {args.repeats}; images/s")
    print("| domain | generate (CPU time) | generate (wall) | render only (CPU) | read + crop (CPU) |")
    print("|---|---|---|---|---|")
    for d in DOMAINS:
        m = med[d]
        print(f"| {d} | {m['generate_cpu']:.0f} | {m['generate_wall']:.0f} | {m['render_cpu']:.0f} | "
              f"{m['read_cpu']:.0f} |")
    print(f"| all (equal mix) | {total_cpu:.0f} | {total_wall:.0f} | | |")
    result = {"size": [width, height], "images": n, "repeats": args.repeats, "core": core,
              "median_images_per_s": med, "all_generate_cpu": total_cpu, "all_generate_wall": total_wall,
              "raw": rows, "load_average": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


def gap_curve(checkpoint: str, gaps: list[float], n: int) -> int:
    from harness.env import offline

    offline()
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from harness.config import RunConfig
    from harness.data.synthetic import SynthParams, render_index, resolve_styles
    from harness.engine import checkpoint as ckpt
    from harness.engine.evaluation import evaluate
    from harness.labels import CLASSES
    from harness.models import create_segmentor

    state = ckpt.load(checkpoint)
    cfg = RunConfig.model_validate(state["config"])
    m = cfg.model
    model = create_segmentor(m.arch, backbone=m.backbone, num_classes=len(CLASSES), pretrained=None, **m.options)
    model.load_state_dict(state["model"])
    resize = cfg.data.val.resize
    params = SynthParams()
    print(f"{checkpoint}: {cfg.method.host}, {m.arch}/{m.backbone}, iteration {state['iteration']}; "
          f"{n} target/val images per gap at {params.width}x{params.height}"
          f"{f' resized to {resize[0]}x{resize[1]}' if resize else ''}; IoU in %")
    big = ["road", "building", "vegetation", "sky", "car"]
    print("| gap | mIoU | pixel acc | " + " | ".join(big) + " |")
    print("|---" * (3 + len(big)) + "|")
    for gap in gaps:
        styles = resolve_styles(gap=gap)
        batches = []
        for i in range(n):
            img, lab = render_index(styles, params, "target", "val", i)
            if resize:
                img = np.asarray(Image.fromarray(img).resize(tuple(resize), Image.BILINEAR))
                lab = np.asarray(Image.fromarray(lab).resize(tuple(resize), Image.NEAREST))
            batches.append({"image": torch.from_numpy(img.transpose(2, 0, 1).copy())[None],
                            "label": torch.from_numpy(lab.astype(np.int64))[None]})
        r = evaluate(model, batches, "cpu")
        cells = " | ".join(f"{100 * r['iou'][CLASSES.index(c)]:.1f}" for c in big)
        print(f"| {gap:.2f} | {100 * r['miou']:.1f} | {100 * r['pixel_acc']:.1f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
