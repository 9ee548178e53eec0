"""`udabench data synth|show|stats|convert|verify`: make, look at, summarise and check datasets.

    udabench data synth                    # params.yaml's `synth` group -> datasets/synthetic
    udabench data synth --out /tmp/s --size 128x64 --count source/train=16 --count target/val=8
    udabench data show                     # PNG grid: samples of every domain with coloured labels
    udabench data stats                    # images per split, per-class pixel frequencies, hashes
    udabench data convert --dataset gta5 --root datasets/gta5     # raw labels -> trainIds + statistics
    udabench data verify --dataset cityscapes --root datasets/cityscapes --split val

Heavy imports (numpy, PIL, torch) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_ROOT = "datasets/synthetic"
DEFAULT_PARAMS = "params.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="generate, inspect, convert and check datasets",
        description="The synthetic domain-shift benchmark (synth, show, stats) and the real datasets "
                    "(convert, verify). Layouts: datasets/README.md.")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True

    s = actions.add_parser(
        "synth", help="generate the synthetic benchmark",
        description="Generate the synthetic benchmark (deterministic: the same parameters give the same "
                    "files). Parameters come from the `synth` group of --params (default params.yaml "
                    "when it exists, else built-in defaults); --seed/--size/--count override them. "
                    "The output folder is replaced atomically at the end.")
    s.add_argument("--params", help=f"params file with a `synth:` group (default: {DEFAULT_PARAMS} if present)")
    s.add_argument("--out", default=DEFAULT_ROOT, help=f"output folder (default: {DEFAULT_ROOT})")
    s.add_argument("--seed", type=int, help="override synth.seed")
    s.add_argument("--size", help="override the image size, WIDTHxHEIGHT (e.g. 256x128)")
    s.add_argument("--count", action="append", default=[], metavar="DOMAIN/SPLIT=N",
                   help="images per split; when given, only the listed splits are generated (repeatable)")
    s.add_argument("--quiet", action="store_true", help="print only the final summary line")
    s.set_defaults(func=cmd_synth)

    w = actions.add_parser(
        "show", help="write a PNG grid of samples with their coloured labels",
        description="Write a PNG grid with N samples of each domain of a synthetic dataset: an image "
                    "row and its coloured label row per domain, to look at the domain gap.")
    w.add_argument("--root", default=DEFAULT_ROOT, help=f"synthetic dataset folder (default: {DEFAULT_ROOT})")
    w.add_argument("--out", default="runs/synthetic_samples.png", help="PNG to write (default: %(default)s, git-ignored)")
    w.add_argument("-n", "--num", type=int, default=6, help="samples per domain (default 6)")
    w.add_argument("--split", help="split to show (default: val where it exists, else train)")
    w.add_argument("--domains", help="comma-separated domains (default: all in the dataset)")
    w.add_argument("--zoom", type=int, default=1, help="integer upscaling of the grid (default 1)")
    w.set_defaults(func=cmd_show)

    t = actions.add_parser(
        "stats", help="summarise a dataset: images, per-class pixel frequencies, hashes",
        description="Summarise a dataset from its statistics (the synthetic manifest, or the class "
                    "statistics of a converted real set; otherwise every label is read).")
    _dataset_args(t, required=False)
    t.set_defaults(func=cmd_stats)

    c = actions.add_parser(
        "convert", help="convert a real dataset's labels to trainIds and write class statistics",
        description="Map every label of a real dataset (all labelled splits/conditions) to trainIds, "
                    "write them with per-image class statistics to --out (default <root>_trainids), "
                    "checking each image/label pair on the way. Loaders use the result automatically.")
    c.add_argument("--dataset", required=True, help="gta5 | synthia | cityscapes | acdc")
    c.add_argument("--root", required=True, help="the raw dataset folder")
    c.add_argument("--out", help="output folder (default: <root>_trainids)")
    c.set_defaults(func=cmd_convert)

    v = actions.add_parser(
        "verify", help="read every image/label pair of a dataset split and report the first problem",
        description="Read and check every image/label pair (readable, labels in range, sizes match).")
    _dataset_args(v, required=True)
    v.set_defaults(func=cmd_verify)


def _dataset_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--dataset", default="synthetic" if not required else None, required=required,
                   help="synthetic | gta5 | synthia | cityscapes | acdc (default: synthetic)")
    p.add_argument("--root", default=None, help=f"dataset folder (default for synthetic: {DEFAULT_ROOT})")
    p.add_argument("--domain", help="synthetic domain or ACDC condition")
    p.add_argument("--split", help="split (default: train)")


def _usage(e: Exception):
    from harness.errors import UsageError

    return UsageError(str(e))


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
        return w, h
    except ValueError:
        raise _usage(ValueError(f"--size '{text}': expected WIDTHxHEIGHT, e.g. 256x128")) from None


def load_synth_params(params: str | None, seed: int | None = None, size: str | None = None,
                      counts: list[str] | None = None):
    """SynthParams from a params file (or defaults) with command-line overrides applied."""
    from harness.data.synthetic import SynthParams, load_params

    if params is not None:
        base = load_params(params)
    elif Path(DEFAULT_PARAMS).is_file():
        from harness.config import load_yaml

        base = load_params(DEFAULT_PARAMS) if "synth" in load_yaml(DEFAULT_PARAMS) else SynthParams()
    else:
        base = SynthParams()
    data = base.model_dump()
    if seed is not None:
        data["seed"] = seed
    if size is not None:
        data["width"], data["height"] = _parse_size(size)
    if counts:
        splits: dict[str, dict[str, int]] = {}
        for text in counts:
            try:
                key, n = text.split("=")
                domain, split = key.split("/")
                splits.setdefault(domain, {})[split] = int(n)
            except ValueError:
                raise _usage(ValueError(f"--count '{text}': expected DOMAIN/SPLIT=N, e.g. target/val=200")) from None
        data["splits"] = splits
    from pydantic import ValidationError

    from harness.config import ConfigError, format_validation_error

    try:
        return SynthParams.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "synth", SynthParams)) from None


def cmd_synth(args: argparse.Namespace) -> int:
    from harness.data.io import DataError
    from harness.data.synthetic import generate

    params = load_synth_params(args.params, args.seed, args.size, args.count)
    t0 = time.perf_counter()
    last = {"t": t0}

    def progress(key: str, i: int, n: int) -> None:
        if not args.quiet and (i == n or time.perf_counter() - last["t"] > 5):
            last["t"] = time.perf_counter()
            print(f"  {key:20s} {i:6d}/{n}", file=sys.stderr, flush=True)

    try:
        manifest = generate(params, args.out, progress=progress)
    except DataError as e:
        raise _usage(e) from None
    seconds = time.perf_counter() - t0
    if not args.quiet:
        print(format_manifest(manifest))
    n = manifest["num_images"]
    print(f"wrote {n} images to {args.out} in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} images/s); "
          f"content hash {manifest['content_hash'][:16]}")
    return 0


def format_manifest(manifest: dict) -> str:
    """A text summary: one line per split, then the per-class pixel frequency of each domain."""
    from harness.labels import CLASSES

    size = manifest["image_size"]
    lines = [f"synthetic benchmark {manifest['generator']}: {size['width']}x{size['height']}, seed "
             f"{manifest['params']['seed']}, {manifest['num_images']} images, "
             f"{manifest['classes_present']}/19 classes present"]
    from harness.data.synthetic import DOMAINS

    def order(key: str) -> tuple[int, str]:
        d, _, sp = key.partition("/")
        return (DOMAINS.index(d) if d in DOMAINS else len(DOMAINS), sp)

    splits = {k: manifest["splits"][k] for k in sorted(manifest["splits"], key=order)}
    for key, info in splits.items():
        lines.append(f"  {key:20s} {info['count']:6d} images  content {info['content_hash'][:12]}  "
                     f"style {info['style_hash'][:12]}")
    keys = list(splits)
    head = "  class (% pixels)   " + "".join(f"{k:>20s}" for k in keys)
    lines += ["", head]
    for c, name in enumerate(CLASSES):
        lines.append(f"  {name:18s} " + "".join(f"{100 * splits[k]['class_pixel_frequency'][c]:20.2f}"
                                              for k in keys))
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    from harness.data.io import DataError

    try:
        out = write_sample_grid(args.root, args.out, args.num, args.split, args.domains, args.zoom)
    except DataError as e:
        raise _usage(e) from None
    print(f"wrote {out}")
    return 0


def write_sample_grid(root: str | Path, out: str | Path, num: int = 6, split: str | None = None,
                      domains: str | None = None, zoom: int = 1) -> Path:
    """A PNG with, per domain, a row of images above a row of their coloured labels."""
    import numpy as np
    from PIL import Image, ImageDraw

    from harness.data.io import DataError, read_label, read_rgb
    from harness.data.synthetic import read_manifest
    from harness.labels import colorize

    if num < 1 or zoom < 1:
        raise DataError(f"--num and --zoom must be >= 1 (got {num}, {zoom})")
    root = Path(root)
    manifest = read_manifest(root)
    splits = manifest["splits"]
    from harness.data.synthetic import DOMAINS

    present = sorted({v["domain"] for v in splits.values()}, key=lambda d: (DOMAINS + (d,)).index(d))
    wanted = [d.strip() for d in domains.split(",")] if domains else present
    w, h = manifest["image_size"]["width"], manifest["image_size"]["height"]
    margin, gap = 84, 2
    rows = []
    for domain in wanted:
        if domain not in present:
            raise DataError(f"{root}: no domain '{domain}'; this dataset has: {', '.join(present)}")
        sp = split or ("val" if f"{domain}/val" in splits else next(v["split"] for v in splits.values()
                                                                    if v["domain"] == domain))
        if f"{domain}/{sp}" not in splits:
            raise DataError(f"{root}: no split '{domain}/{sp}'; this dataset has: {', '.join(splits)}")
        folder = root / domain / sp
        k = min(num, splits[f"{domain}/{sp}"]["count"])
        names = [f"{i:05d}.png" for i in range(k)]
        imgs = [read_rgb(folder / "images" / n) for n in names]
        labs = [colorize(read_label(folder / "labels" / n)) for n in names]
        rows.append((f"{domain}\n{sp}", imgs, labs))
    cols = max(len(r[1]) for r in rows)
    grid = Image.new("RGB", (margin + cols * (w + gap), len(rows) * 2 * (h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (title, imgs, labs) in enumerate(rows):
        y = r * 2 * (h + gap)
        draw.text((4, y + h // 2), title, fill=(0, 0, 0))
        for c, (im, lb) in enumerate(zip(imgs, labs)):
            x = margin + c * (w + gap)
            grid.paste(Image.fromarray(np.asarray(im)), (x, y))
            grid.paste(Image.fromarray(lb), (x, y + h + gap))
    if zoom > 1:
        grid = grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def _ds_cfg(args: argparse.Namespace):
    from harness.config import DatasetConfig

    name = args.dataset or "synthetic"
    root = args.root or (DEFAULT_ROOT if name == "synthetic" else None)
    if root is None:
        raise _usage(ValueError(f"--root is required for dataset '{name}'"))
    domain = args.domain if args.domain is not None else ("source" if name == "synthetic" else None)
    return DatasetConfig(name=name, root=root, domain=domain, split=args.split or "train")


def cmd_stats(args: argparse.Namespace) -> int:
    from harness.data.io import DataError

    try:
        if (args.dataset or "synthetic") == "synthetic" and args.domain is None and args.split is None:
            from harness.data.synthetic import read_manifest

            print(format_manifest(read_manifest(args.root or DEFAULT_ROOT)))
            return 0
        from harness.data.dataset import build_dataset, dataset_hash
        from harness.labels import CLASSES

        cfg = _ds_cfg(args)
        ds = build_dataset(cfg)
        counts = ds.class_pixel_counts()
        total = counts.sum(0)
        print(f"{cfg.name} {cfg.domain or ''} {cfg.split}: {len(ds)} images, hash {dataset_hash(cfg)}")
        for c, name in enumerate(CLASSES):
            print(f"  {name:18s} {100 * total[c] / max(1, total.sum()):7.2f} %  in {int((counts[:, c] > 0).sum())} images")
    except DataError as e:
        raise _usage(e) from None
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from harness.data.convert import convert_dataset, default_output
    from harness.data.io import DataError

    out = args.out or default_output(args.root)
    t0 = time.perf_counter()
    try:
        info = convert_dataset(args.dataset, args.root, out)
    except DataError as e:
        raise _usage(e) from None
    print(f"converted {info['count']} {args.dataset} labels to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.data.dataset import build_dataset
    from harness.data.io import DataError

    cfg = _ds_cfg(args)
    try:
        ds = build_dataset(cfg)
        for i in range(len(ds)):
            ds.load(i)  # DataError naming the file: unreadable, sizes differ, values not trainIds
    except DataError as e:
        raise _usage(e) from None
    print(f"{cfg.name} {cfg.domain or ''} {cfg.split}: {len(ds)} image/label pairs OK")
    return 0
