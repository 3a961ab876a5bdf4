"""Export a generator to ONNX (dynamic height and width) and check it against PyTorch on Set5.

    python pipelines/export.py --model models:/srgan-generator@champion --output exports/champion
    python pipelines/export.py --model runs/srresnet-demo/checkpoint_... --output exports/demo --opset 18

Writes DIR/generator.onnx and its sidecar DIR/generator.onnx.json (scale, value ranges, model name
and version, opset), checks the graph with onnx.checker, then upscales every image of --data
(default: Set5 under $SRGAN_SHARED_DATASETS or ../shared/datasets) with both runtimes and prints the
largest difference; more than 1/255 anywhere fails the export (exit status 1). Serve, the bulk job and
evaluate.py load DIR with --runtime onnxruntime. Needs the export extra: pip install -e ".[export]".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.app.cli import add_model_arguments, run_cli  # noqa: E402
from srgan.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1 / 255  # one 8-bit level
OPSETS = range(18, 24)  # the dynamo exporter writes 18 and up; onnxruntime 1.32 runs up to 23


def default_data() -> Path:
    return Path(os.environ.get("SRGAN_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "Set5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, default_model="models:/srgan-generator@champion")
    p.add_argument("--output", required=True, help="directory to write generator.onnx and generator.onnx.json into")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (only onnx)")
    p.add_argument("--opset", type=int, default=18, help=f"ONNX opset ({OPSETS.start}-{OPSETS.stop - 1}; default 18)")
    p.add_argument("--data", default=None, help="dataset dir (HR/ and LR_bicubic/X<scale>/) for the parity check (default: Set5)")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --output")
    return p.parse_args(argv)


def check_output(out: Path, overwrite: bool) -> None:
    from srgan.export import is_export_dir

    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file: pass a directory")
    if is_export_dir(out) and not overwrite:
        raise UserError(f"{out} already holds an export: pass --overwrite to replace it, or another --output")
    if out.is_dir() and any(out.iterdir()) and not is_export_dir(out):
        raise UserError(f"--output {out} is a non-empty directory that holds no export: pass an empty or new directory")


def main() -> int:
    args = parse_args()
    if args.opset not in OPSETS:
        raise UserError(f"--opset must be {OPSETS.start}-{OPSETS.stop - 1}, got {args.opset}")
    from srgan.export.onnx_export import require

    for module in ("onnx", "onnxruntime", "onnxscript"):  # before minutes of work, not after
        require(module)
    out = Path(args.output)
    check_output(out, args.overwrite)
    from srgan.core.evaluation import find_pairs, read_uint8
    from srgan.core.inference import weights_digest
    from srgan.export import export_onnx, load_exported, parity, record_parity
    from srgan.tracking.refs import load_generator_ref, resolve_model

    source = resolve_model(args.model, tracking_uri=args.tracking_uri)
    data = Path(args.data) if args.data else default_data()
    net, info = load_generator_ref(source)
    pairs = find_pairs(data, scale=info.generator.scale, use_degrade=False)  # a bad --data fails before the export
    digest = weights_digest(net)
    print(f"exporting {source.requested} ({source.uri}, {digest}) to {out}/ with opset {args.opset} ...", flush=True)
    export_onnx(net, out, opset=args.opset, model={"name": source.name, "version": source.version, "source": source.uri, "requested": source.requested},
                weights_digest=digest)
    print("onnx.checker: ok")
    gen = load_exported(out)
    errors = parity(net, gen, {p.name: read_uint8(p.lr_path).float() / 255 for p in pairs})
    worst = max(errors.values())
    for name, err in errors.items():
        print(f"  {name:<12} max |torch - onnxruntime| = {err:.3g} ({err * 255:.3f}/255)")
    print(f"parity on {data.name} ({len(errors)} images): max error {worst:.3g} = {worst * 255:.4f}/255 (limit 1/255)")
    passed = worst <= TOLERANCE
    record_parity(out, {"data": str(data), "images": len(errors), "max_abs_error": worst, "per_image": errors, "limit": TOLERANCE, "passed": passed})
    if not passed:  # the sidecar says so, and load_exported refuses it
        print(f"error: the export differs from PyTorch by {worst * 255:.2f}/255 (> 1/255); do not serve it", file=sys.stderr)
        return 1
    print(f"wrote {out / 'generator.onnx'} and {out / 'generator.onnx.json'}; serve it with --model {out} --runtime onnxruntime")
    return 0


if __name__ == "__main__":
    run_cli(main)
