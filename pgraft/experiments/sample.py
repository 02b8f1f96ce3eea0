"""`pgraft sample`: images from a finished Stable Diffusion run, with the composed sampler it was
trained for (tuned network from T down to N_I, base model below; docs/method.md §2).

The run folder holds config.yaml (model folder, sampler, N_I) and models/lora (diffusers'
load_lora_weights layout) or models/pipeline (a full pipeline folder), each with pgraft.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig, TrainRunConfig, load
from ..engine.compose import AdapterOff, Composed
from ..engine.distributed import local_device
from ..engine.rollout import rollout
from ..engine.train import make_trainable
from ..errors import ConfigError
from ..models.export import read_meta, save_lora, save_pipeline
from ..models.schedule import Schedule
from ..models.stable_diffusion import load_stable_diffusion
from ..models.text_unet import TextConditionalUNet
from ..report import save_grid
from ..tasks.stable_diffusion import DTYPES


def export_stable_diffusion(cfg: TrainRunConfig, model, models_dir: Path, meta: dict) -> Path:
    """Save the tuned network in diffusers' formats (LoRA folder, or a full pipeline folder)."""
    meta = {**meta, "base_model": str(cfg.stable_diffusion.path), "sampler": cfg.method.sampler.model_dump()}
    if cfg.method.train.mode == "lora":
        return save_lora(model, models_dir / "lora", meta)
    return save_pipeline(model.unet, cfg.stable_diffusion.path, models_dir / "pipeline", meta)


def _load_lora(denoiser: TextConditionalUNet, folder: Path, train: TrainConfig):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    tuned = make_trainable(denoiser, train)
    state = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    missing = set_peft_model_state_dict(tuned, {f"base_model.model.{k}": v for k, v in state.items()})
    if getattr(missing, "unexpected_keys", None):
        raise ConfigError(f"{folder}: LoRA weights do not fit the model ({missing.unexpected_keys[:3]} ...)")
    return tuned.eval()


@torch.no_grad()
def run_sample(run_dir: str | Path, prompt: str, num: int, seed: int, out: str | Path | None) -> list[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = load(TrainRunConfig, run_dir / "config.yaml")
    if cfg.stable_diffusion is None:
        raise ConfigError(f"{run_dir} is not a Stable Diffusion run; `pgraft sample` reproduces those")
    sd_cfg, m = cfg.stable_diffusion, cfg.method
    device, dtype = local_device(), DTYPES[sd_cfg.dtype]
    sd = load_stable_diffusion(
        sd_cfg.path, [prompt], negative_prompt=sd_cfg.negative_prompt, dtype=dtype, device=device
    )
    lora, full = run_dir / "models" / "lora", run_dir / "models" / "pipeline"
    if lora.is_dir():
        n_i = read_meta(lora)["n_i"]
        tuned = _load_lora(sd.denoiser, lora, m.train)
        policy = Composed(tuned, AdapterOff(tuned, sd.denoiser.prediction_type), n_i)
    elif full.is_dir():
        from diffusers import UNet2DConditionModel

        n_i = read_meta(full)["n_i"]
        unet = UNet2DConditionModel.from_pretrained(full, subfolder="unet", torch_dtype=dtype, local_files_only=True)
        d = sd.denoiser
        unet = unet.eval().requires_grad_(False).to(device)  # beside the base, in the run's dtype
        tuned = TextConditionalUNet(unet, d.prompt_embeds, None, d.prediction_type, d.scheduler_config)
        policy = Composed(tuned, d, n_i)
    else:
        raise ConfigError(f"{run_dir}/models holds neither lora/ nor pipeline/: was the run finished?")
    s = m.sampler
    schedule = Schedule.from_scheduler_config(sd.denoiser.scheduler_config, s.steps, s.kind, s.eta)
    x = rollout(
        policy,
        schedule,
        torch.zeros(num, dtype=torch.long),
        sd.sample_shape,
        (seed, "sample"),
        guidance_scale=s.guidance_scale,
        null_label=sd.null_label,
        batch_size=m.rollout_batch,
        device=device,
    ).x0
    images = sd.decode(x).cpu()
    out = Path(out) if out is not None else run_dir / "samples"
    from PIL import Image

    paths = []
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        paths.append(out / f"sample_{seed}_{i:03d}.png")
        Image.fromarray(arr).save(paths[-1])
    save_grid(images, torch.zeros(num, dtype=torch.long), out / f"grid_{seed}.png")
    return paths
