"""Command: facebookresearch/DiT checkpoints in and out of diffmem, without torch (diffmem.checkpoints).

Import a `.pt` (an official DiT-XL-2-256x256.pt, a train.py checkpoint - its 'ema' weights are taken, like DiT's
find_model - or any torch.save'd state dict) into a saved model directory that `checkpoints.load_model` reads:

    python -m diffmem.convert --checkpoint DiT-XL-2-256x256.pt --out models/dit_xl2_256
        [--key auto|ema|model|state_dict|''] [--heads N] [--num_classes K] [--image_size S]

writes models/dit_xl2_256/model.json (the DiT fields, provenance: source file and SHA-1, the key, the time input
'discrete' that DDPM-trained models want, see diffmem.guidance) and params.msgpack. Export a saved model (e.g. one
pruned with diffmem.pruning.export_pruned and written with checkpoints.save_model) back to the reference code:

    python -m diffmem.convert --model models/pruned --export_pt pruned.pt

writes pruned.pt (torch.load-able; removed heads are zero-padded back to full width, which leaves the function
unchanged) and pruned.pt.json with the `models.DiT(**reference_kwargs)` that loads it.
"""
from __future__ import annotations

import argparse
import hashlib
import sys

from diffmem import checkpoints, io, torch_dit


def file_sha1(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha1()
    with io.path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def import_checkpoint(checkpoint: str, out: str, *, key: str = "auto", heads=None, num_classes=None,
                      image_size=None) -> dict:
    """`torch_dit.import_dit` then `checkpoints.save_model(out, ...)`; returns the model.json info."""
    model, params, got = torch_dit.import_dit(checkpoint, key=key, heads=heads, num_classes=num_classes,
                                                image_size=image_size)
    info = dict(source=str(checkpoint), source_sha1=file_sha1(checkpoint), key=got["key"], time_input="discrete",
                reference_kwargs=torch_dit.reference_kwargs(model))
    checkpoints.save_model(out, model, params, **info)
    return dict(info, fields=checkpoints.model_fields(model), num_params=got["num_params"])


def export_model(model_dir: str, out: str) -> dict:
    """`checkpoints.load_model(model_dir)` then `torch_dit.export_dit(out, ...)`; returns the reference kwargs."""
    model, params = checkpoints.load_model(model_dir)
    return dict(reference_kwargs=torch_dit.export_dit(out, model, params), heads=list(model.head_counts))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m diffmem.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a facebookresearch/DiT .pt file to import")
    ap.add_argument("--out", help="the saved model directory to write (with --checkpoint)")
    ap.add_argument("--key", default="auto", help="the checkpoint entry holding the weights (default: auto)")
    ap.add_argument("--heads", type=int, help="attention heads (not stored in a state dict; known DiT sizes: auto)")
    ap.add_argument("--num_classes", type=int, help="classes, for a label table without a null row")
    ap.add_argument("--image_size", type=int, help="the DiT's input size (latent size for the official DiTs: "
                                                   "image size / 8); read from pos_embed when stored")
    ap.add_argument("--model", help="a saved model directory to export (with --export_pt)")
    ap.add_argument("--export_pt", help="the .pt file to write (with --model)")
    return ap


def main(argv=None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    importing, exporting = bool(a.checkpoint or a.out), bool(a.model or a.export_pt)
    if importing == exporting or (importing and not (a.checkpoint and a.out)) or \
            (exporting and not (a.model and a.export_pt)):
        ap.error("give either --checkpoint X.pt --out DIR (import) or --model DIR --export_pt Y.pt (export)")
    try:
        if importing:
            r = import_checkpoint(a.checkpoint, a.out, key=a.key, heads=a.heads, num_classes=a.num_classes,
                                  image_size=a.image_size)
            print(f"imported {a.checkpoint} (entry {r['key'] or 'top level'!r}): DiT {r['fields']}, "
                  f"{r['num_params']:,} parameters -> {a.out}/{checkpoints.MODEL_FILE}, {checkpoints.PARAMS_FILE}")
        else:
            r = export_model(a.model, a.export_pt)
            print(f"exported {a.model} (heads per block {r['heads']}) -> {a.export_pt}; load it with "
                  f"models.DiT(**{r['reference_kwargs']}).load_state_dict(torch.load({a.export_pt!r}))")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
