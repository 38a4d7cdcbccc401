"""Time one training step of a tiny VAE family, eager against CUDA graphs, per step shape.

    python benchmarks/profile_train.py --family wan [--steps 20] [--batch 32] [--out data/bench/train_step_wan.json]

For each mode the script trains from the same seeded weights: `warmup` + `steps` steps of each shape the
training meets (an image batch; an image batch plus a clip batch of each clip length), timed with
the GPU synchronised, plus the time to make a batch of data. With graphs it also checks that a step at
LR 0 leaves the weights as they were and that one at the training LR moves them (the LR is read from
its tensor by the captured AdamW). Writes a JSON record with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext

import torch

from workbench.models.photos import TrainingPhotos
from workbench.models.train import DEFAULTS, TrainStep, _is_video, _set_lr, build_tiny, make_optimizer
from workbench.ops.vae import optimized


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _batches(family: str, data: TrainingPhotos, cfg: dict, video: bool):
    """The step shapes of a training run: name -> a function making (image batch, clip batch or None)."""
    def images():
        x = data.images_batch(cfg["batch"], cfg["size"])
        return x[:, :, None] if video else x

    shapes = {"image": lambda: (images(), None)}
    for frames in cfg["clip_frames"] if video and cfg["clip_batch"] else ():
        shapes[f"image+clip{frames}"] = (lambda f: lambda: (images(), data.clips_batch(cfg["clip_batch"], f,
                                                                                    cfg["clip_size"])))(frames)
    return shapes


def profile(family: str, graphs: bool, steps: int, batch: int | None, lr: float = 1e-3) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = dict(DEFAULTS[family], **({"batch": batch} if batch else {}))
    vae, preset = build_tiny(family, 0)
    vae = vae.to(device).train()
    video = _is_video(preset)
    opt = make_optimizer(vae, lr, device)
    data = TrainingPhotos(device=device, seed=0)
    run = TrainStep(vae, opt, 1e-5, device, graphs=graphs)
    out = {"graphs": run.graphs, "batch": cfg["batch"], "size": cfg["size"], "shapes": {}}
    with optimized(vae, ["causal_conv"]) if video else nullcontext():
        for name, make in _batches(family, data, cfg, video).items():
            for _ in range(run.warmup + 1):  # eager warm-up steps, then the capture
                run(*make())
            _sync()
            t = time.perf_counter()
            for _ in range(steps):
                inputs = make()
            _sync()
            t_data = (time.perf_counter() - t) / steps
            t = time.perf_counter()
            losses = []
            for _ in range(steps):
                loss, _ = run(*make())
                losses.append(float(loss))  # a sync per step, as the logged steps of a run do every 10
            _sync()
            t_step = (time.perf_counter() - t) / steps
            out["shapes"][name] = {"step_ms": round(t_step * 1e3, 2), "data_ms": round(t_data * 1e3, 2),
                                   "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)]}
            print(f"[{family}] graphs={run.graphs} {name}: {t_step * 1e3:.1f} ms/step "
                  f"(data {t_data * 1e3:.1f} ms) loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
        if run.graphs:
            before = [p.detach().clone() for p in vae.parameters()]
            _set_lr(opt, 0.0)
            run(*inputs)
            _sync()
            frozen = all(torch.equal(a, p) for a, p in zip(before, vae.parameters()))
            _set_lr(opt, lr)
            run(*inputs)
            _sync()
            moved = any(not torch.equal(a, p) for a, p in zip(before, vae.parameters()))
            out["lr_check"] = {"lr0_leaves_weights": frozen, "lr_moves_weights": moved}
            print(f"[{family}] graphed LR check: lr=0 leaves weights {frozen}, lr={lr} moves them {moved}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="wan")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    record = {
        "what": "one training step of a tiny VAE family, eager vs CUDA graphs",
        "command": " ".join(["python benchmarks/profile_train.py", *sys.argv[1:]]),
        "machine": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__, "python": platform.python_version(),
        "family": args.family, "steps": args.steps,
        "modes": [profile(args.family, g, args.steps, args.batch) for g in (False, True)],
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
