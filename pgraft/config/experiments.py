"""The experiments' configs: `pgraft demo`, `sweep`, `compare` (with its baseline search),
`bases`, `train` (embedded tasks or Stable Diffusion) and `inc`. Each starts from the chosen
task's presets (its TaskDefinition) where the config leaves a field unset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from . import registry
from .engine import (
    CheckpointConfig,
    DistributedConfig,
    EvalConfig,
    PGraftConfig,
    SamplerConfig,
    _n_i_is_chosen_by_the_experiment,
    _validated_method,
)
from .models import FlowModelConfig
from .schema import _Strict, deep_merge
from .tasks import BaseVariant, TaskConfig, task_definition, with_task_defaults


class DemoRun(_Strict):
    """One fine-tuned model of the demo: ``kind`` graft (N_I = 0), pgraft (N_I = ``n_i``, else
    pgraft_n_i), ddpo or grpo (the task's tuned values, its TaskDefinition.tuned_baselines), with
    ``changes`` to the shared ``method`` (e.g. {select: {rule: dedup}})."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["graft", "pgraft", "ddpo", "grpo"]
    n_i: int | None = Field(None, ge=1)  # pgraft runs only: this run's N_I instead of pgraft_n_i
    changes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _n_i_for_pgraft(self):
        if self.n_i is not None and self.kind != "pgraft":
            raise ValueError(f"run {self.name!r}: n_i applies to pgraft runs only, not {self.kind}")
        return self


class DemoConfig(_Strict):
    """`pgraft demo`: the base and fine-tuned models (``runs``) at one sample budget."""

    task: TaskConfig = Field(default_factory=TaskConfig)
    method: PGraftConfig = PGraftConfig()
    pgraft_n_i: int = Field(6, ge=1)  # N_I of the pgraft runs; default: the task's demo_n_i
    runs: list[DemoRun] = Field(default_factory=list)  # default: the task's demo_runs
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        data = with_task_defaults(data)
        if isinstance(data, dict):
            task = task_definition(data)
            if task is not None:
                data = {"runs": list(task.demo_runs), "pgraft_n_i": task.demo_n_i, **data}
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
        changes = {"graft": {"n_i": 0}, "pgraft": {"n_i": run.n_i or self.pgraft_n_i}}.get(run.kind)
        if changes is None:  # a policy-gradient baseline: the task's tuned values
            changes = {**self.task.definition.tuned_baselines.get(run.kind, {}), "algorithm": run.kind}
        data = deep_merge(deep_merge(self.method.model_dump(), changes), run.changes)
        return _validated_method(data, run.name, self.method.seed)


class SweepConfig(_Strict):
    """`pgraft sweep`: P-GRAFT at several N_I plus the Var[r | x_{N_I}] diagnostic."""

    task: TaskConfig = Field(default_factory=TaskConfig)
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
        return with_task_defaults(data)

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

    task: TaskConfig = Field(default_factory=TaskConfig)
    # half the demo's samples and a third of its GRAFT steps (M = 32, 100 steps a round), so that
    # 5 methods × 3 seeds fit in 40 (digits) and 60 (animals) minutes on 2 cores
    method: PGraftConfig = Field(
        default_factory=lambda: PGraftConfig(samples_per_condition=32, train={"steps_per_round": 100})
    )
    methods: list[CompareMethod] = Field(default_factory=lambda: ["ddpo", "grpo", "graft", "pgraft"], min_length=1)
    pgraft_n_i: list[int] = Field(default_factory=lambda: [6, 12], min_length=1)  # the sweep's best (0.25·S) and 0.5·S
    # the baselines' changes to ``method``; unset: the task's tuned values (TaskDefinition.tuned_baselines)
    ddpo: dict[str, Any] = Field(default_factory=dict)
    grpo: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    eval: EvalConfig = EvalConfig(samples_per_class=50)  # the final evaluation (3 seeds: 1,500 samples)
    # the evaluation after every round; unset: a fifth of ``eval``'s (at least 1), so that a task
    # whose final evaluation is large (molecules: 2,000 unconditional samples) gets a curve that is too
    curve_samples_per_class: int | None = Field(None, ge=1)
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _tuned_defaults(cls, data: Any) -> Any:
        """Start ``ddpo`` / ``grpo`` from the task's tuned values and ``method`` / ``eval`` from
        its preset defaults; what the config sets wins."""
        if not isinstance(data, dict):
            return data
        data = with_task_defaults(data)
        task = task_definition(data)
        tuned = task.tuned_baselines if task is not None else {}
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
        if self.curve_samples_per_class is None:
            self.curve_samples_per_class = max(1, self.eval.samples_per_class // 5)
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


class BasesConfig(_Strict):
    """`pgraft bases`: each task's base variants measured beside the real held-out images."""

    tasks: list[str] = Field(default_factory=lambda: ["digits", "animals"], min_length=1)  # tasks with base variants
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
            if registry.is_known(name) and not registry.get(name).base_variants:
                raise ValueError(f"tasks: {name} has no base variants (bases compares an image task's variants)")
            for variant in self.variants:
                self.task_config(name, variant)  # raises with the field named
        return self

    def task_config(self, name: str, variant: str) -> TaskConfig:
        return TaskConfig.model_validate({**self.task, "name": name, "base": variant})


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

    task: TaskConfig = Field(default_factory=TaskConfig)
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
        return with_task_defaults(data)

    @model_validator(mode="after")
    def _reward_goes_with_sd(self):
        if self.stable_diffusion is not None and not self.reward:
            raise ValueError("stable_diffusion needs at least one reward term (reward: [{name: vqascore}])")
        if self.stable_diffusion is None and self.reward:
            raise ValueError("reward terms apply to stable_diffusion runs; embedded tasks use their judge")
        return self


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

    task: TaskConfig = Field(default_factory=TaskConfig)
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
