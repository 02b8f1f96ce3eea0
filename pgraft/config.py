"""Typed, validated configs (pydantic), loaded from YAML and overridable from the command line.

Every field carries its allowed range; a bad value raises :class:`ConfigError` whose message
names the field (dotted path) and what is allowed. Defaults marked *(ours)* are our choices where
the paper is silent (docs/method_choices.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class UNetConfig(_Strict):
    """The base denoiser of an embedded task and its DDPM pretraining budget."""

    block_out_channels: tuple[int, ...] = (24, 48, 48)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # The pretraining budget and the caption noise come from the task's base variant
    # (TaskConfig.base, BASE_VARIANTS below) unless set here.
    pretrain_steps: int = Field(150, ge=1)
    pretrain_batch: int = Field(128, ge=1)
    pretrain_lr: float = Field(2e-3, gt=0)
    # constant, or linear decay to 0 over pretrain_steps (converged bases, ours)
    pretrain_lr_schedule: Literal["constant", "linear_decay"] = "constant"
    # The fraction rho of training conditions replaced by another class's (uniformly among the
    # others): web-caption-like noise that makes a base draw well but follow its prompt poorly.
    caption_noise: float = Field(0.0, ge=0, lt=1)
    cond_dropout: float = Field(0.1, ge=0, lt=1)  # label dropout, so the model can do CFG
    seed: int = 0


class JudgeConfig(_Strict):
    """The classifier whose probability of the prompted class is the reward."""

    steps: int = Field(800, ge=1)
    batch: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0


ImageTaskName = Literal["digits", "animals"]
TaskName = Literal["digits", "animals", "molecules", "layouts"]
BaseVariant = Literal["noisy_captions", "undertrained"]

# What each base variant sets in ``task.unet`` unless the config sets it (docs/experiments.md, "The base models";
# the same for every task, so a config written out for one task means the same for another).
# noisy_captions (default, the paper's premise): trained to convergence (linear LR decay) on
# conditions of which a fraction rho = 0.5 is another class's, so samples are sharp members of
# *some* class but follow the prompt poorly. undertrained (the first bases, a record): clean
# conditions, 150 steps at a constant LR, so the base is poor at every noise level.
BASE_VARIANTS: dict[str, dict] = {
    "noisy_captions": {"pretrain_steps": 3000, "pretrain_lr_schedule": "linear_decay", "caption_noise": 0.5},
    "undertrained": {"pretrain_steps": 150, "pretrain_lr_schedule": "constant", "caption_noise": 0.0},
}


class GraphModelConfig(_Strict):
    """The molecules task's base: a graph transformer (pgraft/models/graph_transformer.py) and its
    DDPM pretraining budget on QM9 (docs/molecules.md)."""

    dim: int = Field(128, ge=8, le=1024)  # atom features
    edge_dim: int = Field(32, ge=4, le=512)  # bond features
    heads: int = Field(4, ge=1, le=32)
    layers: int = Field(4, ge=1, le=16)
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    pretrain_steps: int = Field(8000, ge=1)  # ~20 epochs of QM9, ~15 min on 2 cores
    pretrain_batch: int = Field(256, ge=1)
    pretrain_lr: float = Field(1e-3, gt=0)
    pretrain_lr_schedule: Literal["constant", "linear_decay"] = "linear_decay"
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        return self


MoleculeTerm = Literal["validity", "qed", "sa", "logp"]


class MoleculeRewardTerm(_Strict):
    name: MoleculeTerm
    weight: float = 1.0


class MoleculesConfig(_Strict):
    """The molecules task: QM9 (qm9pack) as graphs, a graph-transformer base, RDKit rewards."""

    model: GraphModelConfig = GraphModelConfig()
    # every term scores an invalid molecule 0, so qed alone is validity × QED (the default)
    reward: list[MoleculeRewardTerm] = Field(default_factory=lambda: [MoleculeRewardTerm(name="qed")], min_length=1)
    # None: all of QM9; N: a seeded random subset of N molecules (tests, quick experiments)
    max_molecules: Optional[int] = Field(None, ge=10)
    # held-out molecules in the Fréchet distance's reference set (and training molecules in its floor)
    reference_size: int = Field(5000, ge=100)


LayoutTerm = Literal["alignment", "overlap", "out_of_page", "shrinkage"]


class LayoutRewardTerm(_Strict):
    name: LayoutTerm
    weight: float = 1.0


def _default_layout_reward() -> list[LayoutRewardTerm]:
    # −(400·alignment + 50·overlap + 25·shrinkage) (ours, docs/layouts.md): alignment and overlap
    # in units of their mean over real pages (0.0024, 0.019). shrinkage is the realism term, added
    # because fine-tuning won overlap by flattening boxes; at 3.5 (its real-page unit) GRAFT still
    # did (area −56%, FID 1.3 → 50), at 25 such layouts score below the base.
    return [
        LayoutRewardTerm(name="alignment", weight=400.0),
        LayoutRewardTerm(name="overlap", weight=50.0),
        LayoutRewardTerm(name="shrinkage", weight=25.0),
    ]


class LayoutFidConfig(_Strict):
    """The layout feature network of the FID metric (pgraft/models/layout_fid.py), trained once on
    the training pages to tell real layouts from perturbed ones and to reconstruct them."""

    dim: int = Field(64, ge=8, le=512)
    heads: int = Field(4, ge=1, le=16)
    layers: int = Field(2, ge=1, le=8)
    steps: int = Field(3000, ge=1)
    batch: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0


class LayoutsConfig(_Strict):
    """The layouts task: auto-labelled layouts of TeX manuals, a type-conditioned slot transformer,
    geometric rewards (docs/layouts.md)."""

    model: GraphModelConfig = GraphModelConfig(dim=96, layers=3, pretrain_steps=6000)
    reward: list[LayoutRewardTerm] = Field(default_factory=_default_layout_reward, min_length=1)
    held_out: int = Field(2000, ge=10)  # held-out pages: the evaluation's conditions and FID reference
    # the rounds' conditions: the n most frequent type multisets of the training pages (ids
    # 0..n-1); None: every multiset the training pages use (883). Fine-tuning on a few frequent
    # ones alone lifted them and degraded the rest of the held-out pages (docs/layouts.md).
    conditions: Optional[int] = Field(None, ge=1)
    fid: LayoutFidConfig = LayoutFidConfig()


# Tasks whose base has no variants (the variants are the image tasks' caption noise), and how
# their diversity is measured.
TASK_LABELS = {"molecules": "molecules (QM9)", "layouts": "layouts (TeX manuals)"}
DIVERSITY_LABELS = {
    "molecules": "diversity (1 − mean Tanimoto)",
    "layouts": "diversity (same-types RMS box dist.)",
}


class TaskConfig(_Strict):
    name: TaskName = "digits"
    base: BaseVariant = "noisy_captions"
    image_size: int = Field(16, ge=8, le=64)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    unet: UNetConfig = UNetConfig()
    judge: JudgeConfig = JudgeConfig()
    molecules: MoleculesConfig = MoleculesConfig()  # the molecules task (the image fields do not apply)
    layouts: LayoutsConfig = LayoutsConfig()  # the layouts task (likewise)
    cache_dir: Optional[Path] = None  # default: $PGRAFT_CACHE or ~/.cache/pgraft

    @property
    def label(self) -> str:
        """How plots and grids name the task ("digits, noisy_captions base"; "molecules (QM9)")."""
        return TASK_LABELS.get(self.name, f"{self.name}, {self.base} base")

    @property
    def diversity_label(self) -> str:
        return DIVERSITY_LABELS.get(self.name, "diversity (within-class RMS dist.)")

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        """Fill ``unet`` fields the config leaves unset from the base variant's preset."""
        if not isinstance(data, dict):
            return data
        preset = BASE_VARIANTS.get(data.get("base", "noisy_captions"))
        unet = data.get("unet", {})
        if preset is None or not isinstance(unet, dict):
            return data  # field validation reports the bad name / variant / section
        return {**data, "unet": {**preset, **unet}}


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


def _n_i_is_chosen_by_the_experiment(method: PGraftConfig, field: str) -> None:
    if method.n_i != 0:
        raise ValueError(f"method.n_i is set by the experiment itself; set {field} instead")
    if method.algorithm != "pgraft":
        raise ValueError(
            "method.algorithm: this experiment runs GRAFT / P-GRAFT at its own N_I; `pgraft compare` runs the baselines"
        )


class EvalConfig(_Strict):
    samples_per_class: int = Field(100, ge=1)
    seed: int = 1_000_003  # held-out seeds, disjoint from every rollout seed
    batch_size: int = Field(500, ge=1)


# What the experiments (demo, sweep, train) start from on a task unless the config sets it, deep-
# merged under the config. Molecules are one unconditional group: M = 1024 samples a round (the
# image demos draw 10 × 64 = 640), K = 128 (12.5%, as 8 of 64) under the dedup rule (the paper's
# molecule setting), rollout in one chunk, and 2,000 held-out samples in every evaluation
# (docs/molecules.md).
TASK_DEFAULTS: dict[str, dict] = {
    "molecules": {
        "method": {"samples_per_condition": 1024, "rollout_batch": 1024, "select": {"rule": "dedup", "k": 128}},
        "eval": {"samples_per_class": 2000, "batch_size": 1000},
    },
    # every training type multiset (883) × M = 8, K = 1 (12.5%, as 8 of 64) a round; evaluation:
    # one layout per held-out page (task.layouts.held_out = 2,000 conditions), LayoutDM's protocol
    "layouts": {
        # lr 3e-4: GRAFT's and P-GRAFT's best of {1e-4, 3e-4} on a search seed, as DDPO's of
        # {1e-4, 3e-4, 1e-3} (docs/results/tune_layouts{,_ours}.json)
        "method": {"samples_per_condition": 8, "rollout_batch": 2048, "select": {"k": 1}, "train": {"lr": 3e-4}},
        "eval": {"samples_per_class": 1, "batch_size": 2000},
    },
}


def _task_name(data: dict) -> str:
    task = data.get("task", {})
    return task.get("name", "digits") if isinstance(task, dict) else getattr(task, "name", "digits")


def _with_task_defaults(data: Any, sections: tuple[str, ...] = ("method", "eval")) -> Any:
    """``data`` with the task's TASK_DEFAULTS merged under the given sections (the config wins; a
    section given as a config object is taken whole)."""
    if not isinstance(data, dict):
        return data
    defaults = TASK_DEFAULTS.get(_task_name(data), {})
    mergeable = [k for k in sections if k in defaults and isinstance(data.get(k, {}), dict)]
    return {**data, **{k: deep_merge(defaults[k], data.get(k, {})) for k in mergeable}}


class DemoRun(_Strict):
    """One fine-tuned model of the demo: ``kind`` graft (N_I = 0), pgraft (N_I = pgraft_n_i) or
    ddpo (the task's tuned DDPO, TUNED_BASELINES), with ``changes`` to the shared ``method``
    (e.g. {select: {rule: dedup}})."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["graft", "pgraft", "ddpo"]
    changes: dict[str, Any] = Field(default_factory=dict)


# The demo's fine-tuned models per task: the image tasks show GRAFT against P-GRAFT; molecules
# add the dedup rule (the paper's molecule setting) and DDPO; layouts add DDPO.
DEMO_RUNS: dict[str, list[dict]] = {
    "digits": [{"name": "graft", "kind": "graft"}, {"name": "pgraft", "kind": "pgraft"}],
    "animals": [{"name": "graft", "kind": "graft"}, {"name": "pgraft", "kind": "pgraft"}],
    "molecules": [
        {"name": "graft", "kind": "graft", "changes": {"select": {"rule": "top_k"}}},
        {"name": "graft_dedup", "kind": "graft", "changes": {"select": {"rule": "dedup"}}},
        {"name": "pgraft_dedup", "kind": "pgraft", "changes": {"select": {"rule": "dedup"}}},
        {"name": "ddpo", "kind": "ddpo"},
    ],
    "layouts": [
        {"name": "graft", "kind": "graft"},
        {"name": "pgraft", "kind": "pgraft"},
        {"name": "ddpo", "kind": "ddpo"},
    ],
}
# N_I of P-GRAFT in the demo per task (the sweeps' best, docs/results.md)
DEMO_N_I: dict[str, int] = {"digits": 6, "animals": 6, "molecules": 3, "layouts": 6}


class DemoConfig(_Strict):
    """`pgraft demo`: the base and fine-tuned models (``runs``) at one sample budget."""

    task: TaskConfig = TaskConfig()
    method: PGraftConfig = PGraftConfig()
    pgraft_n_i: int = Field(6, ge=1)  # N_I of the pgraft runs; default per task (DEMO_N_I)
    runs: list[DemoRun] = Field(default_factory=list)  # default per task (DEMO_RUNS)
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        data = _with_task_defaults(data)
        if isinstance(data, dict):
            name = _task_name(data)
            data = {"runs": DEMO_RUNS.get(name, []), "pgraft_n_i": DEMO_N_I.get(name, 6), **data}
        return data

    @model_validator(mode="after")
    def _n_i_in_range(self):
        _n_i_is_chosen_by_the_experiment(self.method, "pgraft_n_i")
        if self.pgraft_n_i >= self.method.sampler.steps:
            raise ValueError(
                f"pgraft_n_i={self.pgraft_n_i} must lie in [1, method.sampler.steps={self.method.sampler.steps})"
            )
        names = [r.name for r in self.runs]
        if not names or len(set(names)) != len(names) or "base" in names:
            raise ValueError(f"runs must name at least one model, each once and none 'base', got {names}")
        for run in self.runs:
            self.run_config(run)  # raises, naming the run, if invalid
        return self

    def run_config(self, run: DemoRun) -> PGraftConfig:
        """The method config of one demo run."""
        changes = {"graft": {"n_i": 0}, "pgraft": {"n_i": self.pgraft_n_i}}.get(run.kind)
        if changes is None:  # ddpo: the task's tuned values
            changes = {**TUNED_BASELINES.get(self.task.name, {}).get("ddpo", {}), "algorithm": "ddpo"}
        data = deep_merge(deep_merge(self.method.model_dump(), changes), run.changes)
        return _validated_method(data, run.name, self.method.seed)


class SweepConfig(_Strict):
    """`pgraft sweep`: P-GRAFT at several N_I plus the Var[r | x_{N_I}] diagnostic."""

    task: TaskConfig = TaskConfig()
    method: PGraftConfig = PGraftConfig()
    # 0.75 left the reward at the base's level at this budget on the undertrained digits base; it
    # costs a quarter of a sweep (docs/experiments.md, "The N_I sweep"); add it with --set n_i_fracs=[...]
    n_i_fracs: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5], min_length=1)
    # Each N_I is run once per seed (method.seed := seed): rows report the mean and the spread.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval: EvalConfig = EvalConfig()
    # Levels where only the Var[r | x_{N_I}] diagnostic runs (no training: cheap): with the trained
    # levels they give the curve of how much of the reward x_{N_I} decides.
    diag_fracs: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    diag_states_per_class: int = Field(4, ge=1)  # fixed x_{N_I} states per class
    diag_completions: int = Field(16, ge=2)  # base-model completions per state

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        return _with_task_defaults(data)

    @model_validator(mode="after")
    def _fracs_in_range(self):
        _n_i_is_chosen_by_the_experiment(self.method, "n_i_fracs")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        steps = [round(f * self.method.sampler.steps) for f in self.n_i_fracs]
        if len(set(steps)) != len(steps):
            raise ValueError(f"n_i_fracs {self.n_i_fracs} name the same N_I twice at {self.method.sampler.steps} steps")
        for field in ("n_i_fracs", "diag_fracs"):
            for f in getattr(self, field):
                if not 0.0 <= f < 1.0:
                    raise ValueError(f"{field} entries must lie in [0, 1), got {f}")
        return self


CompareMethod = Literal["ddpo", "grpo", "graft", "pgraft"]

# The baselines' settings per task unless a config sets them: the best of `pgraft compare --tune`
# on that task (one seed, its own held-out seeds; docs/results/tune_<task>.json, docs/experiments.md).
TUNED_BASELINES: dict[str, dict[str, dict]] = {
    "digits": {
        "ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
        "grpo": {"train": {"lr": 1e-3}, "pg": {"clip_range": 1e-2}},
    },
    "animals": {
        "ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
        "grpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
    },
    # DDPO only (the demo's baseline): docs/results/tune_molecules{,_refine}.json
    "molecules": {"ddpo": {"train": {"lr": 1e-4}, "pg": {"clip_range": 1e-2}}},
    # DDPO only: docs/results/tune_layouts.json (lr 1e-4, 3e-4, 1e-3 at clip 1e-2)
    "layouts": {"ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}}},
}


class TuneConfig(_Strict):
    """`pgraft compare --tune`: the baselines' small search, one seed, on its own held-out seeds."""

    lrs: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3], min_length=1)
    clip_ranges: list[float] = Field(default_factory=lambda: [1e-4, 1e-2], min_length=1)
    seed: int = 100  # a rollout seed no compared run uses
    eval_seed: int = 2_000_003  # held-out seeds disjoint from the comparison's eval.seed


class CompareConfig(_Strict):
    """`pgraft compare`: base, DDPO, GRPO, GRAFT and P-GRAFT at the same number of samples drawn.

    Every method starts from ``method`` (the shared budget: M, rounds, sampler, rollout seeds)
    with its own changes: ``n_i`` for P-GRAFT, ``ddpo``/``grpo`` for the baselines (fields of
    PGraftConfig, e.g. {train: {lr: ...}, pg: {clip_range: ...}}: the tuned values, docs/experiments.md).
    """

    task: TaskConfig = TaskConfig()
    # half the demo's samples and a third of its GRAFT steps (M = 32, 100 steps a round), so that
    # 5 methods × 3 seeds fit in 40 (digits) and 60 (animals) minutes on 2 cores
    method: PGraftConfig = Field(
        default_factory=lambda: PGraftConfig(samples_per_condition=32, train={"steps_per_round": 100})
    )
    methods: list[CompareMethod] = Field(default_factory=lambda: ["ddpo", "grpo", "graft", "pgraft"], min_length=1)
    pgraft_n_i: list[int] = Field(default_factory=lambda: [6, 12], min_length=1)  # the sweep's best (0.25·S) and 0.5·S
    # the baselines' changes to ``method``; unset: the task's tuned values (TUNED_BASELINES)
    ddpo: dict[str, Any] = Field(default_factory=dict)
    grpo: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval: EvalConfig = EvalConfig(samples_per_class=50)  # the final evaluation (3 seeds: 1,500 samples)
    curve_samples_per_class: int = Field(10, ge=2)  # the evaluation after every round
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _tuned_defaults(cls, data: Any) -> Any:
        """Start ``ddpo`` / ``grpo`` from the task's tuned values and ``method`` / ``eval`` from
        its TASK_DEFAULTS; what the config sets wins."""
        if not isinstance(data, dict):
            return data
        data = _with_task_defaults(data)
        tuned = TUNED_BASELINES.get(_task_name(data), {})
        merged = {k: deep_merge(v, data.get(k, {})) for k, v in tuned.items() if isinstance(data.get(k, {}), dict)}
        return {**data, **merged}  # a non-mapping value is left for field validation to report

    @model_validator(mode="after")
    def _methods_valid(self):
        _n_i_is_chosen_by_the_experiment(self.method, "pgraft_n_i")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for n_i in self.pgraft_n_i:
            if not 1 <= n_i < self.method.sampler.steps:
                raise ValueError(f"pgraft_n_i entries must lie in [1, {self.method.sampler.steps}), got {n_i}")
        for name in self.methods:
            self.method_configs(name, self.seeds[0])  # raises, naming the method, if invalid
        return self

    def method_configs(self, name: str, seed: int) -> dict[str, PGraftConfig]:
        """The runs behind a method name at one seed: {run name: its config}."""
        base = self.method.model_dump()
        if name in ("ddpo", "grpo"):
            changes = {**getattr(self, name), "algorithm": name}
            return {name: _validated_method(deep_merge(base, changes), name, seed)}
        if name == "graft":
            return {"graft": _validated_method(base, name, seed)}
        return {f"pgraft_{n}": _validated_method({**base, "n_i": n}, name, seed) for n in self.pgraft_n_i}


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _validated_method(data: dict, name: str, seed: int) -> PGraftConfig:
    try:
        return PGraftConfig.model_validate({**data, "seed": seed})
    except ValidationError as exc:
        raise ValueError(f"the {name} method's config is invalid: {_describe(exc)}") from None


class BasesConfig(_Strict):
    """`pgraft bases`: each task's base variants measured beside the real held-out images."""

    tasks: list[ImageTaskName] = Field(default_factory=lambda: ["digits", "animals"], min_length=1)
    variants: list[BaseVariant] = Field(default_factory=lambda: ["noisy_captions", "undertrained"], min_length=1)
    sampler: SamplerConfig = SamplerConfig()  # the demo's sampler
    eval: EvalConfig = EvalConfig()  # 100 per class: 1,000 samples per base
    confident: float = Field(0.9, gt=0, lt=1)  # "quality ≥ confident" is the second quality figure
    # task fields applied to every (task, variant), e.g. {cache_dir: ..., judge: {steps: 100}};
    # name and base come from the lists above
    task: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _task_fields_valid(self):
        if {"name", "base"} & set(self.task):
            raise ValueError("task.name and task.base are chosen by the tasks and variants lists")
        for name in self.tasks:
            for variant in self.variants:
                self.task_config(name, variant)  # raises with the field named
        return self

    def task_config(self, name: str, variant: str) -> TaskConfig:
        return TaskConfig.model_validate({**self.task, "name": name, "base": variant})


class CheckpointConfig(_Strict):
    """When `pgraft train` checkpoints: every round boundary, plus every ``every_steps`` optimizer steps."""

    every_steps: int = Field(0, ge=0)  # 0: round boundaries only
    keep_last: int = Field(2, ge=1)  # complete checkpoints kept (older ones are deleted)


class DistributedConfig(_Strict):
    # A peer that dies or hangs makes the others exit with a clear message within this time.
    # It also bounds every collective, so it must exceed the longest single-rank phase (rank 0
    # pretraining an uncached task while the others wait).
    timeout_s: float = Field(600.0, gt=0)


RewardName = Literal["vqascore", "clip_score", "aesthetic", "jpeg_compressibility", "jpeg_incompressibility"]


class RewardTerm(_Strict):
    name: RewardName
    weight: float = 1.0
    clip_path: Optional[Path] = None  # clip_score, aesthetic: a local CLIPModel folder
    head_path: Optional[Path] = None  # aesthetic: the LAION predictor's weights
    model: str = "clip-flant5-xxl"  # vqascore: the t2v_metrics scoring model

    @model_validator(mode="after")
    def _paths(self):
        if self.name in ("clip_score", "aesthetic") and self.clip_path is None:
            raise ValueError(f"reward {self.name} needs clip_path (a local CLIP model folder)")
        if self.name == "aesthetic" and self.head_path is None:
            raise ValueError("reward aesthetic needs head_path (the predictor's weights)")
        return self


class StableDiffusionConfig(_Strict):
    """A local Stable Diffusion 1.x/2.x folder and the prompt set to align it on."""

    path: Path
    prompts: Path  # .txt (one a line) or .jsonl ({"prompt": ...})
    eval_prompts: Optional[Path] = None  # default: hold out eval_fraction of `prompts`
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    negative_prompt: str = ""
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16 needs a GPU
    decode_batch: int = Field(8, ge=1)
    attention: Literal["auto", "xformers", "sdpa"] = "auto"


class TrainRunConfig(_Strict):
    """`pgraft train`: one P-GRAFT run across ranks, checkpointed and resumable."""

    task: TaskConfig = TaskConfig()
    method: PGraftConfig = Field(default_factory=lambda: PGraftConfig(n_i=6))  # N_I = 0.25·S (docs/experiments.md)
    keep_rounds: int = Field(1, ge=1)  # rounds of accepted rows the buffer trains on
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    distributed: DistributedConfig = DistributedConfig()
    # Stable Diffusion instead of the embedded task: the model, its prompts and the reward terms.
    stable_diffusion: Optional[StableDiffusionConfig] = None
    reward: list[RewardTerm] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        return _with_task_defaults(data)

    @model_validator(mode="after")
    def _reward_goes_with_sd(self):
        if self.stable_diffusion is not None and not self.reward:
            raise ValueError("stable_diffusion needs at least one reward term (reward: [{name: vqascore}])")
        if self.stable_diffusion is None and self.reward:
            raise ValueError("reward terms apply to stable_diffusion runs; embedded tasks use their judge")
        return self


class FlowModelConfig(_Strict):
    """A flow-matching UNet and its training budget (inverse noise correction, docs/method.md §3)."""

    block_out_channels: tuple[int, ...] = (24, 48, 48)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = True
    train_steps: int = Field(300, ge=1)
    batch: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0

    def unet(self) -> UNetConfig:
        return UNetConfig(
            block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block, attention=self.attention
        )


class InversionConfig(_Strict):
    max_iters: int = Field(50, ge=1)
    tol: float = Field(1e-4, gt=0)  # max |update| of the fixed point, per step
    data_noise: float = Field(0.0, ge=0)  # σ added to the data before inverting (the paper's 1e-3 when unstable)


class IncEvalConfig(_Strict):
    samples: int = Field(2000, ge=100)  # generated samples per FID
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=2)  # FID mean ± std over these
    batch_size: int = Field(1000, ge=1)


class IncConfig(_Strict):
    """`pgraft inc`: the base flow at several step counts against base + correction, FID vs FLOPs."""

    task: TaskConfig = TaskConfig()
    base: FlowModelConfig = FlowModelConfig()
    # About 4× fewer parameters than the base (half the channels), as in the paper.
    corrector: FlowModelConfig = FlowModelConfig(block_out_channels=(12, 24, 24), train_steps=600)
    base_steps: list[int] = Field(default_factory=lambda: [4, 8, 16, 32], min_length=1)
    # (K, corrector steps). Backward Euler needs |h|·Lip(v) < 1: on the digits base it reconstructs
    # to ~1% at K = 16 and degrades below (docs/inc.md), so the correction is measured at K = 16; the
    # corrector's own Euler sampler needs a few steps (2 shrinks its output, docs/inc.md).
    pairs: list[tuple[int, int]] = Field(default_factory=lambda: [(16, 2), (16, 4), (16, 8)], min_length=1)
    inversion: InversionConfig = InversionConfig()
    eval: IncEvalConfig = IncEvalConfig()

    @model_validator(mode="after")
    def _steps_positive(self):
        for k in self.base_steps:
            if k < 1:
                raise ValueError(f"base_steps entries must be >= 1, got {k}")
        for k, c in self.pairs:
            if k < 1 or c < 1:
                raise ValueError(f"pairs must be (K >= 1, corrector steps >= 1), got {(k, c)}")
        return self


C = TypeVar("C", bound=BaseModel)


def build(cls: type[C], data: dict | None = None, overrides: list[str] | None = None) -> C:
    """Validate ``data`` (plus ``key.path=value`` overrides) as ``cls``; raise ConfigError."""
    data = dict(data or {})
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
    return build(cls, data, overrides)


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like field.path=value")
    key, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[parts[-1]] = value


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not field:  # a cross-field check: its message names the fields itself
            lines.append(msg)
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        lines.append(f"config field '{field}': {msg}{shown}")
    return "invalid config:\n  " + "\n  ".join(lines)
