"""Train the tiny VAE presets on the bundled photos and write the weights that ship in data/weights/.

    python -m workbench train-tiny --family wan --seconds 470 --out data/weights   (= python -m workbench.models.train)

One run per architecture family (see trained.FAMILIES): `wan` (Wan2.1 / Wan2.2-A14B / Qwen-Image /
Qwen-Image-Edit, one architecture), `wan22` (Wan2.2-TI2V-5B: 48 channels, 2x2 patches, 16x) and `glm`
(GLM-Image's AutoencoderKL). The encoder and decoder learn together: L1 + MSE reconstruction plus a
small KL term, AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA. Every step sees a batch of
photo crops; the video families add, every `clip_every` steps (DEFAULTS), a batch of synthetic
camera-motion clips of 9 or 17 frames, so the causal temporal path learns too. `chelsea` and `coffee`
are never trained on. On CUDA each step shape runs as a CUDA graph (TrainStep): the tiny models' steps
are bound by kernel launches.

A run is seeded. With `--seconds` the LR schedule follows the time spent, so a run stopped by its budget
has finished its decay; the card records the steps made, and `--steps N` runs N steps on a schedule that
follows the steps instead (the same shape, not bit for bit the same run). Output: <family>.safetensors
(fp16, whole VAE), <family>.json and <family>.md (the card), <family>_chelsea.png (input |
reconstruction) and, for the video families, <family>_clip.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..metrics import psnr
from ..ops.vae import optimized
from .photos import HELD_OUT, TrainingPhotos, load_photo, photo_to_size, synthetic_clip
from .presets import get_preset
from .trained import FAMILIES

# Per family: image batch and crop size; clip batch, frame counts and size (video families only).
# Wan's 8x decoder learns slower than Wan2.2's patchified one: it sees a clip every third step only, so
# that its picture path gets three times the steps (879 steps with a clip every step gave 19 dB).
DEFAULTS = {
    "wan": dict(batch=32, size=192, clip_batch=3, clip_frames=(9, 17), clip_size=128, clip_every=3),
    "wan22": dict(batch=32, size=192, clip_batch=3, clip_frames=(9, 17), clip_size=128, clip_every=1),
    "glm": dict(batch=48, size=192, clip_batch=0, clip_frames=(), clip_size=0, clip_every=0),
}
EVAL_CLIP = dict(frames=17, height=256, width=256, seed=0, min_scale=0.7)


def build_tiny(family: str, seed: int = 0):
    """The family's trained tiny architecture (its preset's trained_config), seeded random weights, float32, CPU."""
    import diffusers

    preset = get_preset(FAMILIES[family][0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = getattr(diffusers, preset.vae_class)(**preset.trained_config)
    return vae, preset


def _is_video(preset) -> bool:
    return preset.latent_ndim == 5


def _step_loss(vae, x, kl_weight: float):
    """x: (B, 3, H, W) or (B, 3, F, H, W) -> (loss, l1)."""
    dist = vae.encode(x).latent_dist
    z = dist.sample()
    rec = vae.decode(z).sample
    rec = rec.float()
    l1 = (rec - x).abs().mean()
    mse = ((rec - x) ** 2).mean()
    kl = 0.5 * (dist.mean.float() ** 2 + dist.var.float() - 1.0 - dist.logvar.float()).mean()
    return l1 + mse + kl_weight * kl, l1


class TrainStep:
    """One optimisation step: the loss of an image batch (and of a clip batch), backward, grad clip 1.0, AdamW.

    On CUDA, with `graphs`, each input shape's step is captured once as a CUDA graph and then replayed: the tiny
    models' steps are bound by kernel launches, not by the GPU (a wan image step is about 7k aten ops at 32
    channels or fewer; a 17-frame clip's, 40k). The first `warmup` steps of a shape run eagerly on a side
    stream (cuDNN picks its algorithms, AdamW makes its state), as torch.cuda.graphs asks. Autocast's weight
    cache is off in both paths, as capture requires, so that they compute alike.
    """

    def __init__(self, vae, opt, kl_weight: float, device: torch.device, graphs: bool = True, warmup: int = 2):
        self.vae, self.opt, self.kl_weight, self.device = vae, opt, kl_weight, device
        self.graphs = graphs and device.type == "cuda"
        self.warmup = warmup
        self.seen: dict[tuple, int] = {}
        self.captured: dict[tuple, tuple] = {}  # shapes -> (graph, static inputs, static outputs, its grads)

    def _run(self, x, clip):
        """-> (loss, image l1), detached."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda",
                            cache_enabled=False):
            loss, l1 = _step_loss(self.vae, x, self.kl_weight)
            if clip is not None:
                loss = loss + _step_loss(self.vae, clip, self.kl_weight)[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.opt.step()
        return loss.detach(), l1.detach()

    def __call__(self, x, clip=None):
        if not self.graphs:
            return self._run(x, clip)
        key = (tuple(x.shape), None if clip is None else tuple(clip.shape))
        if key in self.captured:
            graph, inputs, outputs, _ = self.captured[key]
            for static, new in zip(inputs, (x, clip)):
                if static is not None:
                    static.copy_(new)
            graph.replay()
            return outputs
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._run(x, clip)
            torch.cuda.current_stream().wait_stream(side)
            return out
        inputs = (x.clone(), None if clip is None else clip.clone())
        graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):  # records, does not run
            outputs = self._run(*inputs)
        # The graph's gradients live in its private pool: keep them referenced while it may replay.
        self.captured[key] = (graph, inputs, outputs, [p.grad for p in self.vae.parameters()])
        graph.replay()
        return outputs


def make_optimizer(vae, lr: float, device: torch.device) -> torch.optim.AdamW:
    """The training's AdamW. On CUDA its LR is a tensor and its state lives on the GPU (capturable), so that a
    step can be a CUDA graph (TrainStep) whose LR `_set_lr` still changes."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(vae.parameters(), lr=torch.tensor(lr, device=device) if cuda else lr,
                             betas=(0.9, 0.99), weight_decay=1e-4, capturable=cuda)


def _set_lr(opt, lr: float) -> None:
    """In place where the LR is a tensor (CUDA graphs read it from its address)."""
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def _lr_at(step: int, progress: float, peak: float, warmup: int, floor: float = 0.02) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` to `floor * peak` as progress goes 0 -> 1.

    `progress` is the fraction of the time budget spent (with --seconds) or of the steps (with --steps),
    so a run stopped by its budget has always finished its decay."""
    ramp = min(1.0, (step + 1) / warmup)
    p = min(1.0, max(0.0, progress))
    return peak * ramp * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def evaluate(vae, family: str, device) -> tuple[dict, dict]:
    """Held-out PSNR (dB) of `vae` (float32, eval mode): per photo at 256x256 and at its own size
    cropped to multiples of 32, the training photo `astronaut` for comparison, and for the video
    families a 17-frame synthetic pan-and-zoom clip of each held-out photo. Returns (metrics, pictures)."""
    preset = get_preset(FAMILIES[family][0])
    video = _is_video(preset)
    out, pics = {}, {}

    def run(x):  # x: (3, H, W) or (3, F, H, W)
        inp = x[None].to(device)
        if video and inp.dim() == 4:
            inp = inp[:, :, None]
        dist = vae.encode(inp).latent_dist
        rec = vae.decode(dist.mode()).sample.float().clamp(-1, 1)
        if video and x.dim() == 3:
            rec = rec[:, :, 0]
        return rec[0].cpu()

    for name in (*HELD_OUT, "astronaut"):
        img = load_photo(name)
        for label, (h, w) in (("256", (256, 256)), ("full", (img.shape[1] // 32 * 32, img.shape[2] // 32 * 32))):
            x = photo_to_size(img, h, w)
            rec = run(x)
            out[f"{name}_{label}"] = round(psnr(rec, x), 2)
            if name == "chelsea" and label == "full":
                pics["chelsea"] = torch.cat([x, rec], dim=2)
        if video and name in HELD_OUT:
            clip = synthetic_clip(img, EVAL_CLIP["frames"], EVAL_CLIP["height"], EVAL_CLIP["width"],
                                  seed=EVAL_CLIP["seed"], min_scale=EVAL_CLIP["min_scale"])
            rec = run(clip)
            out[f"{name}_clip"] = round(psnr(rec, clip), 2)
            out[f"{name}_clip_min_frame"] = round(min(psnr(rec[:, f], clip[:, f]) for f in range(clip.shape[1])), 2)
            if name == "chelsea":
                pics["clip"] = torch.cat([torch.cat(list(clip[:, ::4].permute(1, 0, 2, 3)), 2),
                                          torch.cat(list(rec[:, ::4].permute(1, 0, 2, 3)), 2)], 1)
    return out, pics


def _save_png(t: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


def train(family: str, *, seconds: float | None = 480, steps: int | None = None, out: str | Path = "data/weights",
          seed: int = 0, lr: float = 1e-3, warmup: int = 100, kl_weight: float = 1e-5, device: str | None = None,
          batch: int | None = None, size: int | None = None, clip_batch: int | None = None,
          clip_size: int | None = None, graphs: bool = True, log_every: int = 50) -> dict:
    """Train one family and write its weights, card and pictures into `out`. Returns the card."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; accepted: {', '.join(FAMILIES)}")
    t_start = time.time()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    cfg = dict(DEFAULTS[family])
    if batch:
        cfg["batch"] = batch
    if size:
        cfg["size"] = size
    if clip_batch is not None and cfg["clip_batch"]:
        cfg["clip_batch"] = clip_batch
    if clip_size and cfg["clip_batch"]:
        cfg["clip_size"] = clip_size
    extra = "".join(f" --{k.replace('_', '-')} {v}" for k, v in
                    (("batch", batch), ("size", size), ("clip_batch", clip_batch), ("clip_size", clip_size)) if v)
    vae, preset = build_tiny(family, seed)
    vae = vae.to(device).train()
    n_params = sum(p.numel() for p in vae.parameters())
    video = _is_video(preset)
    data = TrainingPhotos(device=device, seed=seed)
    opt = make_optimizer(vae, lr, device)
    budget = None if seconds is None else seconds - min(30.0, 0.3 * seconds)  # time for evaluation and saving
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[{family}] {preset.vae_class} tiny {json.dumps(_arch(preset))} params={n_params} device={device} "
          f"photos={len(data.names)} cfg={cfg}", flush=True)

    def progress() -> float:
        return step / steps if steps else (time.time() - t_start) / budget

    step, losses = 0, []
    run_step = TrainStep(vae, opt, kl_weight, device, graphs=graphs)
    t0 = time.time()
    # A lone image frame runs the causal convs as 2-D convolutions: a third of their work, the same gradients.
    with optimized(vae, ["causal_conv"]) if video else nullcontext():
        while progress() < 1.0:
            _set_lr(opt, _lr_at(step, progress(), lr, warmup))
            x = data.images_batch(cfg["batch"], cfg["size"])  # (B, 3, S, S)
            if video:
                x = x[:, :, None]  # (B, 3, 1, S, S): one frame
            clip = None
            if video and cfg["clip_batch"] and step % cfg["clip_every"] == 0:
                frames = cfg["clip_frames"][step // cfg["clip_every"] % len(cfg["clip_frames"])]
                clip = data.clips_batch(cfg["clip_batch"], frames, cfg["clip_size"])  # (b, 3, F, s, s)
            loss, l1 = run_step(x, clip)
            step += 1
            if step % 10 == 0 or step < 10:
                losses.append((step, float(l1)))
            if step % log_every == 0:
                print(f"[{family}] step {step} ({progress():.0%}) l1={float(l1):.4f} loss={float(loss):.4f} "
                      f"lr={float(opt.param_groups[0]['lr']):.2e} t={time.time() - t_start:.0f}s", flush=True)
    train_seconds = time.time() - t0

    # Ship fp16; evaluate the shipped (rounded) weights in float32.
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in vae.state_dict().items()}
    weights = out / f"{family}.safetensors"
    save_file(state, str(weights), metadata={"family": family, "preset": preset.name, "class": preset.vae_class,
                                             "trained_config": json.dumps(preset.trained_config)})
    vae.load_state_dict({k: v.float() for k, v in state.items()})
    vae.eval()
    metrics, pics = evaluate(vae, family, device)
    _save_png(pics["chelsea"], out / f"{family}_chelsea.png")
    if "clip" in pics:
        _save_png(pics["clip"], out / f"{family}_clip.png")

    last = [v for _, v in losses[-20:]]
    card = {
        "family": family,
        "presets": list(FAMILIES[family][1]),
        "vae_class": preset.vae_class,
        "architecture": _arch(preset),
        "parameters": n_params,
        "file": weights.name,
        "file_bytes": weights.stat().st_size,
        "dtype": "float16",
        "data": {"train_photos": list(data.names), "held_out": list(HELD_OUT),
                 "sources": "scikit-image skimage/data and matplotlib sample_data (bundled files only)",
                 "augmentation": "random windows (whole short side down to 1/4), horizontal flips, brightness "
                                 "+-0.1, contrast +-15%, saturation +-20%, hue +-0.15 rad; colour photos 3x as "
                                 "likely as greys",
                 "images": f"batch {cfg['batch']} of {cfg['size']}x{cfg['size']} crops per step",
                 "clips": (f"batch {cfg['clip_batch']} of {cfg['clip_size']}x{cfg['clip_size']} camera-motion clips "
                           f"(pan up to 0.4 window heights, zoom up to 1.3x) of {list(cfg['clip_frames'])} frames, "
                           f"alternating, every {cfg['clip_every']} step(s)" if video else None)},
        "training": {"steps": step, "seconds": round(train_seconds, 1),
                     "schedule_by": "time budget" if not steps else "steps",
                     "seed": seed, "lr": lr, "warmup": warmup, "schedule": "linear warm-up, then cosine to 2% of peak over the budget",
                     "optimizer": "AdamW(betas=(0.9, 0.99), weight_decay=1e-4), grad clip 1.0",
                     "loss": f"L1 + MSE + {kl_weight:g} * KL (means over elements)",
                     "precision": ("bf16 autocast" if cuda else "float32")
                     + ("; each step shape a CUDA graph" if run_step.graphs else "") + (
                         "; image frames through the causal convs as 2-D convs (workbench.ops.vae causal_conv)"
                         if video else ""),
                     "final_l1": round(sum(last) / max(1, len(last)), 5),
                     "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
                     "torch": torch.__version__},
        "psnr_db": metrics,
        "psnr_note": "PSNR = 10 log10(4 / MSE) on [-1, 1] pictures, posterior mean decoded, fp16 weights run in "
                     "float32; '256': 256x256 resize+centre crop; 'full': own size cropped to multiples of 32 "
                     "(chelsea 288x448, coffee 384x576); 'clip': 17-frame 256x256 pan-and-zoom clip "
                     f"({EVAL_CLIP}), PSNR over all frames, and its worst frame",
        "command": " ".join(["python -m workbench train-tiny", *sys.argv[1:]]) if sys.argv[1:] else None,
        "reproduce": (f"python -m workbench train-tiny --family {family} --steps {step} --seed {seed} "
                      f"--out {out}{extra}"),
    }
    (out / f"{family}.json").write_text(json.dumps(card, indent=1) + "\n")
    (out / f"{family}.md").write_text(card_markdown(card))
    print(f"[{family}] done: {json.dumps(metrics)}", flush=True)
    return card


def _arch(preset) -> dict:
    keys = ("base_dim", "decoder_base_dim", "z_dim", "dim_mult", "num_res_blocks", "patch_size", "is_residual",
            "block_out_channels", "layers_per_block", "norm_num_groups", "latent_channels")
    return {k: preset.trained_config[k] for k in keys if k in preset.trained_config}


def card_markdown(card: dict) -> str:
    m = card["psnr_db"]
    t = card["training"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in m.items())
    return f"""# Tiny {card['vae_class']} weights: family `{card['family']}`

Serves the tiny presets {', '.join(f'`{p}`' for p in card['presets'])} (their `trained_config` in
`workbench/models/presets.py`). The whole VAE, encoder and decoder, in {card['dtype']}:
`{card['file']}`, {card['file_bytes'] / 1e6:.2f} MB, {card['parameters']:,} parameters.

- Architecture (tiny config): `{json.dumps(card['architecture'])}`
- Data: {len(card['data']['train_photos'])} bundled photos ({card['data']['sources']}):
  {', '.join(card['data']['train_photos'])}. Never trained on: {', '.join(card['data']['held_out'])}.
- Augmentation: {card['data']['augmentation']}.
- Per step: {card['data']['images']}{'; ' + card['data']['clips'] if card['data']['clips'] else ''}.
- Training: {t['steps']} steps in {t['seconds']} s on {t['device']} (torch {t['torch']}), seed {t['seed']},
  {t['optimizer']}, peak LR {t['lr']} ({t['schedule']}, {t['warmup']} warm-up steps), {t['loss']},
  {t['precision']}. Final training L1 (mean of the last logged steps): {t['final_l1']}.
- Command: `{card['command']}`
- The same number of steps, on a step-based schedule: `{card['reproduce']}`

## Held-out PSNR (dB)

{card['psnr_note']}.

| picture | PSNR |
| --- | --- |
{rows}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench train-tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES))
    parser.add_argument("--seconds", type=float, default=480, help="wall-clock budget, evaluation included")
    parser.add_argument("--steps", type=int, default=None, help="a fixed number of steps (overrides --seconds)")
    parser.add_argument("--out", default=os.path.join("data", "weights"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=None, help="image batch (default per family)")
    parser.add_argument("--size", type=int, default=None, help="image crop size (default per family)")
    parser.add_argument("--clip-batch", type=int, default=None, help="clip batch (video families)")
    parser.add_argument("--clip-size", type=int, default=None, help="clip crop size (video families)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-graphs", dest="graphs", action="store_false",
                        help="run every step eagerly (on CUDA the steps are CUDA graphs by default)")
    args = parser.parse_args(argv)
    train(args.family, seconds=None if args.steps else args.seconds, steps=args.steps, out=args.out, seed=args.seed,
          lr=args.lr, device=args.device, batch=args.batch, size=args.size, clip_batch=args.clip_batch,
          clip_size=args.clip_size, graphs=args.graphs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
