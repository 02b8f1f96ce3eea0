"""The engine's configs: the round loop (PGraftConfig and its sampler, selection, training,
policy-gradient and speed sections), evaluation, checkpoints and distributed runs."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from .schema import _describe, _Strict


class SamplerConfig(_Strict):
    # flow_sde: Flow-GRPO's stochastic step, for flow (velocity) bases; eta is its noise level a
    kind: Literal["ddim", "ddpm", "flow_sde"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    eta: float = Field(1.0, ge=0, le=1)  # DDIM: eta=1 is DDPM-like and makes completions random
    guidance_scale: float = Field(1.0, ge=0)  # 1: conditional only (no CFG pass)

    @model_validator(mode="after")
    def _eta_only_for_ddim(self):
        if self.kind == "ddpm" and self.eta != 1.0:
            raise ValueError("eta applies to the ddim sampler only; leave it at 1.0 with kind=ddpm")
        return self


SelectRule = Literal["top_k", "best_of_n", "threshold", "classic", "dedup"]


class SelectConfig(_Strict):
    """A GRS acceptance rule (docs/method.md §1)."""

    rule: SelectRule = "top_k"
    k: int = Field(8, ge=1, le=1024)  # top_k and dedup
    threshold: Optional[float] = None  # threshold rule: accept r >= threshold
    alpha: float = Field(0.1, gt=0)  # classic rule: accept with prob exp((r - r_max)/alpha)
    r_max: Optional[float] = 1.0  # classic rule: a bound on r; None uses the group's max (ours)
    dedup_eps: float = Field(0.05, ge=0)  # dedup: RMS pixel distance under which two are duplicates

    @model_validator(mode="after")
    def _threshold_needs_value(self):
        if self.rule == "threshold" and self.threshold is None:
            raise ValueError("rule=threshold needs select.threshold to be set")
        return self


class TrainConfig(_Strict):
    mode: Literal["full", "lora"] = "full"
    lora_rank: int = Field(8, ge=1, le=256)
    lora_alpha: float = Field(8.0, gt=0)
    # Module names PEFT wraps; None: attention projections, ResNet convolutions, time projections.
    lora_targets: Optional[list[str]] = Field(None, min_length=1)
    # dsm_from_xni: DSM from the accepted x_{N_I} at level s (ours, default, docs/method.md §2);
    # dsm_from_x0: ordinary DSM on the accepted x_0 with t restricted to t > s (ours, option).
    loss: Literal["dsm_from_xni", "dsm_from_x0"] = "dsm_from_xni"
    # unit_target: weight each t so the target has unit variance (same minimiser, ours).
    weighting: Literal["unit_target", "none"] = "unit_target"
    t_margin: int = Field(0, ge=0)  # draw t > s + t_margin (a margin is the other cure, docs/method.md §2)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    steps_per_round: int = Field(300, ge=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    zero_stage: int = Field(0, ge=0, le=3)  # DeepSpeed ZeRO stage of the trainable network
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 needs a GPU
    warmup_steps: int = Field(0, ge=0)  # linear LR warm-up (DeepSpeed WarmupLR); 0: constant LR
    # > 0: after the warm-up, decay the LR linearly to 0 at this many steps (DeepSpeed WarmupDecayLR)
    decay_steps: int = Field(0, ge=0)
    cond_dropout: float = Field(0.0, ge=0, lt=1)


Algorithm = Literal["pgraft", "ddpo", "grpo"]


class PolicyGradientConfig(_Strict):
    """DDPO / GRPO (docs/method.md §4; docs/policy_gradient.md): PPO-clip over the sampler's chain.

    Defaults are ddpo-pytorch's (config/base.py) except where marked *(ours)*.
    """

    clip_range: float = Field(1e-4, gt=0, lt=1)  # PPO clip of the per-step ratio
    adv_clip_max: float = Field(5.0, gt=0)  # advantages clipped to [-max, max]
    inner_epochs: int = Field(1, ge=1)  # passes over each round's trajectories
    timestep_fraction: float = Field(1.0, gt=0, le=1)  # share of each trajectory's steps trained
    # per-step KL to the base model, closed form for two Gaussians of one σ (Flow-GRPO's beta);
    # 0 = DDPO as published, > 0 = DPOK-like
    kl_coef: float = Field(0.0, ge=0)
    # DDPO's per-condition tracker: a window of the last `stat_window` rewards per condition,
    # batch statistics until it holds `stat_min_count`. ddpo-pytorch: 16 and 16 over ~1 sample
    # per prompt and epoch; ours: 128 (two rounds of M = 64), so the window is not just the last
    # quarter of this round's group.
    stat_window: int = Field(128, ge=1)
    stat_min_count: int = Field(16, ge=1)
    # GRPO (Flow-GRPO): centre per group, scale by the std of the whole round (global_std, its
    # default) or of the group
    global_std: bool = True
    # the reference code averages the Gaussian log-density over the D dimensions, which keeps
    # ratios near 1 for large D; "sum" is the exact log-probability
    log_prob_reduction: Literal["mean", "sum"] = "mean"


class SpeedConfig(_Strict):
    """How a round runs, not what it computes (docs/kernels.md, "A whole round"; pgraft/engine/speed.py).

    Each option is tested against the plain path: equal results, or within the tolerance stated
    in tests/test_speed.py for reduced precision. The defaults are the fastest options that pass
    those tests, measured by benches/bench_round.py on the CPU (results in docs/kernels.md).
    Evaluation always runs the plain path, so its numbers do not depend on these options.
    """

    # autocast of the rollout's network forwards. auto: bfloat16 where the device computes it
    # natively (CUDA with bf16, or a CPU with AMX / AVX512-BF16) and the learner only scores the
    # samples; float32 for learners that recompute the rollout's log-probabilities (ddpo, grpo)
    sample_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # autocast of the training forward (the fp32 weights and optimizer stay): faster on the digits
    # UNet, slower on the animals text UNet on our CPU, so off by default; ddpo/grpo refuse it
    train_precision: Literal["fp32", "bf16"] = "fp32"
    inference_mode: bool = True  # torch.inference_mode (not just no_grad) for the rollout's forwards
    channels_last: bool = False  # NHWC memory format for the networks' 4-D inputs
    # torch.compile (inductor), each graph checked against eager on its first call (VerifiedCompile)
    compile_sampling: bool = False  # the rollout's denoisers
    compile_training: bool = False  # the trained network's forward (its sampling then runs compiled too)
    threads: Optional[int] = Field(None, ge=1, le=1024)  # torch intra-op threads; None: torch's default
    cuda_graphs: bool = False  # CUDA graphs for the fixed-shape sampling loop (CUDA only)
    # CUDA: TF32 tensor-core math for float32 convolutions and matrix products. Off: fp32 is IEEE
    # fp32 (torch's own default leaves cuDNN convolutions on TF32), which PPO's ratio needs
    tf32: bool = False
    # CUDA: deterministic algorithms (slower; an op without one raises), so that a resumed or
    # repeated GPU run reproduces bit for bit; the CPU is deterministic without it
    deterministic: bool = False


class PGraftConfig(_Strict):
    """One run of the engine's round loop: ``rounds`` of rollout → reward → select → buffer → train.

    ``algorithm`` chooses what a round learns from its rollout: ``pgraft`` (GRS acceptance and
    the denoising loss; ``n_i`` is the intermediate sampler step N_I in [0, sampler.steps), 0 is
    GRAFT), or the policy-gradient baselines ``ddpo`` and ``grpo`` (``pg``; every sample is kept
    with its advantage, one optimizer step per batch of ``train.batch_size`` trajectories).
    """

    algorithm: Algorithm = "pgraft"
    pg: PolicyGradientConfig = PolicyGradientConfig()
    n_i: int = Field(0, ge=0)
    samples_per_condition: int = Field(64, ge=1, le=4096)  # M
    rounds: int = Field(3, ge=1)
    rollout_batch: int = Field(512, ge=1)
    select: SelectConfig = SelectConfig()
    train: TrainConfig = TrainConfig()
    sampler: SamplerConfig = SamplerConfig()
    speed: SpeedConfig = SpeedConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.algorithm != "pgraft" and self.speed.train_precision != "fp32":
            raise ValueError(
                f"speed.train_precision={self.speed.train_precision}: {self.algorithm}'s PPO ratios compare "
                "log-probabilities recomputed in training with the rollout's; both must be float32"
            )
        if self.algorithm != "pgraft" and self.speed.sample_precision == "bf16":
            raise ValueError(
                f"speed.sample_precision=bf16: {self.algorithm} recomputes the rollout's log-probabilities "
                "in float32; use auto or fp32"
            )
        if self.algorithm != "pgraft" and self.speed.tf32:
            raise ValueError(
                f"speed.tf32: {self.algorithm}'s PPO ratio needs IEEE float32 in the rollout and its "
                "recomputation (TF32 rounding moves the first ratio by about the clip range)"
            )
        if self.n_i >= self.sampler.steps:
            raise ValueError(f"n_i={self.n_i} must lie in [0, sampler.steps={self.sampler.steps})")
        if self.algorithm != "pgraft" and self.n_i != 0:
            raise ValueError(f"n_i={self.n_i} applies to algorithm=pgraft; {self.algorithm} trains the whole chain")
        if self.algorithm != "pgraft" and self.sampler.kind == "ddim" and self.sampler.eta == 0:
            raise ValueError(f"{self.algorithm} needs a stochastic sampler: set sampler.eta > 0")
        if self.algorithm == "grpo" and self.samples_per_condition < 2:
            raise ValueError("grpo normalises within groups: samples_per_condition must be >= 2")
        if (
            self.algorithm == "pgraft"
            and self.select.rule in ("top_k", "dedup")
            and self.select.k > self.samples_per_condition
        ):
            raise ValueError(
                f"select.k={self.select.k} exceeds samples_per_condition={self.samples_per_condition} (K must be <= M)"
            )
        return self


class EvalConfig(_Strict):
    samples_per_class: int = Field(100, ge=1)
    seed: int = 1_000_003  # held-out seeds, disjoint from every rollout seed
    batch_size: int = Field(500, ge=1)


# What the experiments (demo, sweep, train) start from on a task unless the config sets it, deep-
# merged under the config. Molecules are one unconditional group: M = 1024 samples a round (the
# image demos draw 10 × 64 = 640), K = 128 (12.5%, as 8 of 64) under the dedup rule (the paper's


class CheckpointConfig(_Strict):
    """When `pgraft train` checkpoints: every round boundary, plus every ``every_steps`` optimizer steps."""

    every_steps: int = Field(0, ge=0)  # 0: round boundaries only
    keep_last: int = Field(2, ge=1)  # complete checkpoints kept (older ones are deleted)


class DistributedConfig(_Strict):
    # A peer that dies or hangs makes the others exit with a clear message within this time.
    # It also bounds every collective, so it must exceed the longest single-rank phase (rank 0
    # pretraining an uncached task while the others wait).
    timeout_s: float = Field(600.0, gt=0)


def _validated_method(data: dict, name: str, seed: int) -> PGraftConfig:
    try:
        return PGraftConfig.model_validate({**data, "seed": seed})
    except ValidationError as exc:
        raise ValueError(f"the {name} method's config is invalid: {_describe(exc)}") from None


def _n_i_is_chosen_by_the_experiment(method: PGraftConfig, field: str) -> None:
    if method.n_i != 0:
        raise ValueError(f"method.n_i is set by the experiment itself; set {field} instead")
    if method.algorithm != "pgraft":
        raise ValueError(
            "method.algorithm: this experiment runs GRAFT / P-GRAFT at its own N_I; `pgraft compare` runs the baselines"
        )
