"""Typed models of params.yaml: one model per section, loaded and validated in one place.

Each section's keys are the keyword arguments of the library functions its stage calls, under
the same names. Unknown keys, bad values and missing sections fail at load time with a ParamsError
(a ValueError) whose message leads with the key path (`data.seed: ...`). A key left out takes its
default here, which is params.yaml's value (tests/test_params.py holds the two together). The sampler
keys that evaluate, sweep and report share are declared once, in PlaneSettings and SamplerSettings.
To add a stage, write its section model here and add a field to `Params` with the section's name.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

# The catalog of names, not the modules that implement them: those import torch, which takes seconds.
from pfgm.names import (ADAPTIVE_METHODS, BACKBONE_ARGUMENTS, GENERIC, METHODS, NETWORK_ARGUMENTS, NETWORKS,
                        SCHEDULES, ZSOLVERS)

DatasetName = Literal[
    "digits",
    "heart",
    "pfgm-text",
    "moons",
    "8gaussians",
    "checkerboard",
    "swissroll",
    "cifar10",
    "celeba64",
    "lsun-bedroom256",
    "ffhq64",
    "folder",
]
TOY_NAMES = ("heart", "pfgm-text", "moons", "8gaussians", "checkerboard", "swissroll")


def _own_folder(out: str) -> str:
    # Output folders are replaced as a whole (data) or cleaned of their own files: never the project root.
    if os.path.normpath(out) in (".", "..", "/"):
        raise ValueError("must name a folder of its own")
    return out


OwnFolder = Annotated[str, AfterValidator(_own_folder)]


class ParamsError(ValueError):
    """params.yaml is unreadable, or a key is unknown, missing or has a bad value."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, and values are not coerced across types
    (strict: "3" is not an int, 1.5 is not an int; an int is accepted where a float is due)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class DataParams(Section):
    """The `data` section: what the prepare stage builds and where it writes it."""

    name: DatasetName = "digits"
    root: str = "data/raw"
    """Folder holding raw files: <root>/cifar-10-batches-py, <root>/img_align_celeba (+ <root>/
    list_eval_partition.txt), <root>/bedroom_train_lmdb (+ bedroom_val_lmdb) or <root>/bedroom_train,
    <root>/ffhq-64x64, or the image folder itself for `folder`. Unused by digits and toys (docs/DATA.md)."""
    download: bool = False
    """cifar10: when its batches are missing, download the official archive into root (md5-verified,
    extracted safely). The other data sets have no stable download; their error says where to get them."""
    out: OwnFolder = "data/prepared/digits"
    """The prepared folder (a DVC output); it is replaced as a whole."""
    seed: int = Field(0, ge=0)
    test_fraction: float = Field(0.167, gt=0.0, lt=1.0)
    """Share of items in the test split (ignored where the files carry the official split: cifar10,
    celeba64 with its partition file, lsun-bedroom256 with bedroom_val_lmdb)."""
    n_points: int = Field(20000, ge=2)
    """Toys: points sampled in total, before the split."""
    image_size: int = Field(32, ge=1)
    """folder: side of the square images after resize and centre crop."""
    channels: Literal[1, 3] = 3
    """folder: 1 for greyscale, 3 for RGB."""
    max_images: int | None = Field(None, ge=2)
    """folder, celeba64, lsun-bedroom256, ffhq64: keep the first max_images files (sorted) or LMDB keys (key
    order), or all; with an official split (CelebA partition file, LSUN val LMDB): this many per split."""


def _augmented_dims(D: int | float) -> int | float:
    if isinstance(D, bool) or not ((isinstance(D, int) and D >= 1) or D == math.inf):
        raise ValueError("must be an integer >= 1, or .inf (the diffusion limit: EDM's Gaussian kernel)")
    return D


AugmentedDims = Annotated[int | float, AfterValidator(_augmented_dims)]
"""PFGM++'s D: an integer >= 1, or .inf in YAML for the D -> infinity limit (EDM's objective)."""


NetworkName = Literal[NETWORKS]
"""Field networks (FieldMLP, FieldConvNet, DDPMpp, NCSNv2Small: the weak backbone of the robustness
experiment) serve both objectives; EDMPrecond (EDM's denoiser around SongUNet, NCSN++ / DDPM++) trains
pfgmpp only."""


def network_arguments(network: str, kwargs: dict[str, Any]) -> set[str]:
    """Keyword names the network class takes (EDMPrecond: its own and its backbone's, by model_type)."""
    if network == "EDMPrecond":
        model_type = kwargs.get("model_type", "SongUNet")
        if model_type not in BACKBONE_ARGUMENTS:
            raise ValueError(f"model_type: unknown backbone {model_type!r} (known: {', '.join(BACKBONE_ARGUMENTS)})")
        return {*NETWORK_ARGUMENTS[network], *BACKBONE_ARGUMENTS[model_type]}
    return set(NETWORK_ARGUMENTS[network])


class TrainParams(Section):
    """The `train` section: network, objective and optimisation (pfgm.training, key for key)."""

    out: OwnFolder = "models/digits"
    """Folder of the run's checkpoints (kept between runs so an interrupted run resumes)."""
    seed: int = Field(0, ge=0)
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda, cuda:1, ..."""
    network: NetworkName = "FieldConvNet"
    network_kwargs: dict[str, Any] = {"channels": 32, "blocks": 4, "embedding": "log"}
    """Keyword arguments of the network class; the data shape is filled in from the data."""
    objective: Literal["pfgm", "pfgmpp"] = "pfgm"
    D: AugmentedDims = 1
    """pfgmpp only: augmented dimensions; .inf is the diffusion limit (EDM's Gaussian kernel)."""
    M: int | None = Field(None, ge=1)
    """pfgm: perturbation range; null derives it from the data (pfgm.perturb.hyperparameters)."""
    z_max: float | None = Field(None, gt=0)
    """pfgm: height of the prior hemisphere the sampler starts from; null: implied by M
    (pfgm.perturb.prior_range). The released configs round it (CIFAR-10: 40 instead of 43.4)."""
    upper_norm: float | None = Field(None, gt=0)
    """pfgm: largest prior norm kept when the sampler clips the prior; null: implied by M."""
    sigma: float = Field(0.01, gt=0)
    tau: float = Field(0.03, gt=0)
    gamma: float = Field(5.0, ge=0)
    restrict_M: bool = True
    small_batch: int | None = Field(128, ge=1)
    """pfgm: rows trained per step; the whole batch (batch_size) are the charges."""
    reduce: Literal["sum", "mean"] = "sum"
    steps: int = Field(3500, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0)
    warmup: int = Field(100, ge=0)
    """Steps of linear learning-rate warm-up (PFGM); 0: none."""
    lr_rampup_kimg: float = Field(0.0, ge=0)
    """EDM's learning-rate ramp-up in thousands of images (batch_size per step): lr * min(images /
    (1000 lr_rampup_kimg), 1), the first step at 0; 0: none. Exclusive with warmup."""
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = True
    """The official EMA warm-up: decay min(ema_decay, (1 + n) / (10 + n)) at update n, so that a short run
    keeps none of its initial weights in the average (pfgm.training.ema); false: the constant ema_decay."""
    ema_halflife_kimg: float | None = Field(None, gt=0)
    """EDM's EMA instead of ema_decay/ema_warmup: decay 0.5 ** (batch_size / half-life in images), the
    half-life ramped up as min(1000 ema_halflife_kimg, ema_rampup_ratio * images so far); null: off."""
    ema_rampup_ratio: float | None = Field(0.05, gt=0)
    """With ema_halflife_kimg: EDM's ramp-up ratio (null: the full half-life from the first update)."""
    augment: float = Field(0.0, ge=0, le=1)
    """pfgmpp with EDMPrecond: probability of EDM's augmentation (CIFAR-10 0.12, FFHQ 0.15), with EDM's
    transforms (pfgm.training.augment.EDM_CIFAR10_KWARGS); the network needs augment_dim 9. 0: off."""
    flip: bool = False
    amp: bool = False
    compile: bool = False
    checkpoint_every: int = Field(500, ge=1)
    sample_every: int = Field(1000, ge=1)
    """Log a grid of EMA samples every this many steps (at checkpoint steps)."""

    @field_validator("network_kwargs")
    @classmethod
    def _arguments_of_network(cls, kwargs: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Known before any data is read: a misspelt argument would otherwise fail only inside the flow.
        network = info.data.get("network")
        if network is None:
            return kwargs  # the network itself is invalid and reported
        known = network_arguments(network, kwargs)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not an argument of {network} (known: {', '.join(sorted(known))})")
        return kwargs


NonNegativeInt = Annotated[int, Field(ge=0)]
Split = Literal["train", "test"]
InceptionMode = Literal["clean", "legacy_tensorflow", "legacy_pytorch"]
"""clean-fid's names (pfgm.inception.MODES)."""
QuantizeMethod = Literal["round", "truncate"]


def _known_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"must be one of {', '.join(METHODS)}")
    return method


PositiveFloat = Annotated[float, Field(gt=0)]
SolverMethod = Annotated[str, AfterValidator(_known_method)]
"""A pfgm.ode.METHODS name (dopri5 is RK45; euler and heun step in z as the official code does)."""
StepCount = Annotated[int, Field(ge=1)]


def _carries_density(method: str) -> str:
    # The z-solvers but the generic ones step the data point alone, without the log-density term.
    if method in ZSOLVERS and method not in GENERIC:
        raise ValueError(f"{method} steps the data point alone and cannot carry the log-density; use one of "
                         f"{sorted(GENERIC)} or a torchdiffeq method")
    return method


LikelihoodMethod = Annotated[str, AfterValidator(_known_method), AfterValidator(_carries_density)]
"""A pfgm.ode.METHODS name that can integrate the log-density along with the point."""


def _check_steps(method: str | None, steps: Any) -> None:
    """Fixed-step methods walk a grid of `steps`; adaptive ones choose their own (an unknown or missing
    method is reported on its own key)."""
    if method in METHODS and method not in ADAPTIVE_METHODS and steps is None:
        raise ValueError(f"method {method!r} is fixed-step and needs steps")


class GridSchedule(Section):
    """The grid of fixed-step methods: `schedule` ln_z (uniform in ln z, the official grid) or power
    (EDM's schedule applied to z, exponent `rho`); adaptive methods choose their own steps."""

    schedule: Literal[SCHEDULES] = "ln_z"
    """Fixed-step grid: ln_z (uniform in ln z) or power (uniform in z^(1/rho); pfgm.zsolvers.power_z)."""
    rho: float | None = Field(None, gt=0, validate_default=True)
    """Exponent of the power schedule (5 suits few-step sampling: docs/SAMPLERS.md); only with power."""

    @field_validator("rho")
    @classmethod
    def _rho_with_power(cls, rho: float | None, info: ValidationInfo) -> float | None:
        # On the rho key rather than the model: the message then names `<section>.rho`.
        schedule = info.data.get("schedule")
        if schedule == "power" and rho is None:
            raise ValueError("schedule power needs rho (e.g. 5)")
        if schedule not in (None, "power") and rho is not None:
            raise ValueError(f"rho applies to the power schedule only (schedule is {schedule!r})")
        return rho


class PlaneSettings(Section):
    """Where every sampler of a section starts and stops: the keys evaluate, sweep and report share."""

    z_min: float = Field(1e-3, gt=0)
    """Height at which the flow stops (the data plane is z = 0)."""
    z_exp: float | None = Field(5.0, gt=0)
    """The official substitution of v_z from ||v_x|| (pfgm.ode); null: the network's own v_z."""
    clip_prior: bool = True
    """Clip prior norms to [1, upper_norm] as the official sampler does."""


class SamplerSettings(GridSchedule, PlaneSettings):
    """One sampler setting, its keys flat in its section (evaluate, report): declared and checked here only."""

    method: SolverMethod = "dopri5"
    """A pfgm.ode.METHODS name: dopri5 (RK45), euler/heun (the official steps in z), dpmpp_2m
    (few-step), torchdiffeq's others; fixed-step methods need `steps`."""
    rtol: float = Field(1e-4, gt=0)
    atol: float = Field(1e-4, gt=0)
    steps: int | None = Field(None, ge=1, validate_default=True)
    """Fixed-step methods: steps of the `schedule` grid."""

    @field_validator("steps")
    @classmethod
    def _steps_for_fixed_step(cls, steps: int | None, info: ValidationInfo) -> int | None:
        _check_steps(info.data.get("method"), steps)
        return steps


class EvaluateParams(SamplerSettings):
    """The `evaluate` section: one sampler setting, FID, bits/dim, and the model registry."""

    out: str = "metrics/evaluate.json"
    seed: int = Field(0, ge=0)
    device: str = "auto"
    num_samples: int = Field(1000, ge=2)
    batch_size: int = Field(500, ge=1)
    features: Literal["auto", "digits", "inception"] = "auto"
    """FID features: auto takes the digits CNN for digits and Inception for other image data."""
    inception_path: str = "/tmp/inception-2015-12-05.pt"
    seeds: list[NonNegativeInt] | None = Field(None, min_length=1)
    """Prior seeds of the sample sets scored for FID and KID, num_samples each: fid_seed<k> and
    kid_seed<k> per set, fid = their mean, fid_std, fid_min (PFGM++ reports the min of three 50k
    sets). null: the one set of `seed`. `seed` also seeds the untrained reference, the floor's
    training rows and the bpd dequantisation. docs/FID.md."""
    fid_reference: Split = "test"
    """The split whose feature statistics samples are compared with: train is the published protocol
    (CIFAR-10: the 50,000 training images), test our digits default. fid_floor stays train vs test."""
    fid_mode: InceptionMode = "clean"
    """clean-fid's Inception preprocessing: clean, legacy_tensorflow (TF Inception's, as the published
    numbers), legacy_pytorch (pytorch-fid's). The digits CNN has no resize and ignores it."""
    quantize: QuantizeMethod = "round"
    """Samples to uint8: round (nearest level) or truncate (the official PFGM code's floor of x*255)."""
    stats_cache: str = "data/fid-stats"
    """Folder of the cached reference features and statistics (keyed by data, network, mode, split)."""
    download_weights: bool = False
    """Fetch missing Inception weights from clean-fid's URL (sha256-checked); off: a missing file is an error."""
    bpd_images: int = Field(0, ge=0)
    """Test images (the first of the split) for bits/dim at the data's own levels, with their standard
    error and the per-pixel histogram baseline bpd_baseline (0: skip; 1 has no standard error)."""
    bpd_method: LikelihoodMethod = "dopri5"
    """Solver of the likelihood ODE (a pfgm.ode.METHODS name but dpmpp_2m), with the sampler's rtol and
    atol when adaptive. PFGM's field-line ODE is stiff on some digits: RK4 at 50 steps then jumps out
    of the trained region and returns |bpd| in the thousands, where RK45 gives 2.6 to 4.5; PFGM++'s
    denoiser ODE is smooth, and RK4 at 20 steps serves (docs/LIKELIHOOD.md)."""
    bpd_steps: int | None = Field(None, ge=1)
    """Steps of a fixed-step bpd_method on a grid uniform in ln z (torchdiffeq's methods step in ln z,
    euler and heun in z)."""
    bpd_z_min: float | None = Field(0.01, gt=0)
    """Height of the plane whose density bits/dim measure (the flow's marginal there); null: z_min.
    Near the plane the network has only seen points close to training images, and the likelihood ODE
    of a test image far from them can blow up there (docs/LIKELIHOOD.md)."""
    bpd_sigma_min: float = Field(0.002, gt=0)
    """PFGM++ models: the sigma whose marginal bits/dim measure (EDM's sigma_min; r = sigma sqrt(D)), carried
    up to sigma_max = 80 by the denoiser's ODE, steps uniform in ln sigma (docs/LIKELIHOOD.md)."""
    bpd_z_exp: float | None = Field(None, gt=0)
    """z_exp of the likelihood ODE; null: the network's own v_z throughout. The substitution suits
    sampling, but its v_z = f(||v_x||) has a Jacobian that grows like 1/(1 - a)^2 as a = ||v_x||/sqrt(N)
    nears 1 (a test point off the data, near the plane), so the divergence term amplifies the
    network's error there: on the default digits model a few test images then get |bpd| in the
    thousands, and RK4 at 50, 100 and 200 steps disagree; without it RK4 and RK45 agree to 0.01."""
    hutchinson: int | None = Field(None, ge=1)
    """Rademacher probes per image for the likelihood trace; null: the exact trace (N vector-Jacobian
    products per network evaluation (pfgm.likelihood.drift_and_exact_trace), allowed up to
    pfgm.likelihood.EXACT_TRACE_MAX_DIMS = 256 dimensions: the digits; larger images need probes). With 2+ probes bpd_probe_se is their share of bpd_se."""
    register_model: bool = True
    model_name: str = "pfgm-digits"
    champion_metric: str = "fid"
    """Lower is better; the registered version with the lowest value holds the alias `champion`."""

    @field_validator("bpd_images")
    @classmethod
    def _not_one_image(cls, images: int) -> int:
        if images == 1:
            raise ValueError("one image has no standard error: use 0 (skip) or at least 2")
        return images

    @field_validator("bpd_steps")
    @classmethod
    def _bpd_steps_for_fixed_step(cls, steps: int | None, info: ValidationInfo) -> int | None:
        _check_steps(info.data.get("bpd_method"), steps)
        return steps

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct (two equal seeds draw the same sample set)")
        return seeds


class SolverGrid(GridSchedule):
    """One solver of the sweep: a method and either its tolerances or its step counts (and grid)."""

    method: SolverMethod
    tolerances: list[PositiveFloat] | None = Field(None, min_length=1, validate_default=True)
    """Adaptive methods only: one point per value, with rtol = atol = the value."""
    steps: list[StepCount] | None = Field(None, min_length=1, validate_default=True)
    """Fixed-step methods only: one point per value, on the grid of `schedule`."""

    @field_validator("tolerances")
    @classmethod
    def _tolerances_for_adaptive(cls, tolerances: list[float] | None, info: ValidationInfo) -> list[float] | None:
        method = info.data.get("method")
        if method is None:
            return tolerances  # the method itself is invalid and reported
        adaptive = method in ADAPTIVE_METHODS
        if adaptive and tolerances is None:
            raise ValueError(f"method {method!r} is adaptive and needs tolerances")
        if not adaptive and tolerances is not None:
            raise ValueError(f"method {method!r} is fixed-step: give steps, not tolerances")
        return tolerances

    @field_validator("steps")
    @classmethod
    def _steps_for_fixed_step(cls, steps: list[int] | None, info: ValidationInfo) -> list[int] | None:
        method = info.data.get("method")
        if method is None:
            return steps
        _check_steps(method, steps)
        if method in ADAPTIVE_METHODS and steps is not None:
            raise ValueError(f"method {method!r} is adaptive: give tolerances, not steps")
        return steps


class SweepParams(PlaneSettings):
    """The `sweep` section: a grid of sampler settings scored against one or more checkpoints."""

    out: str = "metrics/sweep.json"
    """Flat JSON summary for `dvc metrics show` (best FID and its solver, number of points)."""
    table: str = "metrics/sweep.csv"
    """The whole sweep, one row per point (also logged to the parent MLflow run, with a markdown copy)."""
    seed: int = Field(0, ge=0)
    """Seeds the prior: every point starts from the same draw."""
    device: str = "auto"
    checkpoints: list[str] = []
    """model.pt files to sweep; empty: <train.out>/model.pt."""
    solvers: list[SolverGrid] = Field(default_factory=lambda: [
        SolverGrid(method="dopri5", tolerances=[1e-3, 1e-4]),
        SolverGrid(method="euler", steps=[10, 20]),
        SolverGrid(method="heun", steps=[5, 10]),
        SolverGrid(method="dpmpp_2m", steps=[4, 5, 6, 8, 10], schedule="power", rho=5.0),
    ], min_length=1)
    """PFGM models: each solver with each of its tolerances or step counts."""
    heun_steps: list[StepCount] = Field([5, 10, 18], min_length=1)
    """PFGM++ models: EDM's Heun sampler with each of these step counts (they ignore `solvers`)."""
    num_samples: int = Field(500, ge=2)
    batch_size: int = Field(500, ge=1)
    workers: int = Field(4, ge=1)
    """Points evaluated at once: threads (runner threads; the timed solves take turns), or the worker
    processes of the LocalCluster that runner dask starts when dask_address is empty."""
    runner: Literal["threads", "dask"] = "threads"
    """Where the points run: threads of this process, or the worker processes of a Dask cluster
    (docs/SWEEPS.md: each worker loads the checkpoint and the FID reference once and runs one solve at a time)."""
    dask_address: str = ""
    """runner dask: the scheduler to send the points to (tcp://host:8786); empty: a LocalCluster of
    `workers` processes on this machine, started for the sweep and closed after it."""
    features: Literal["auto", "digits", "inception"] = "auto"
    inception_path: str = "/tmp/inception-2015-12-05.pt"
    fid_reference: Split = "test"
    """As evaluate.fid_reference: the split every point's FID and KID compare with."""
    fid_mode: InceptionMode = "clean"
    """As evaluate.fid_mode."""
    quantize: QuantizeMethod = "round"
    """As evaluate.quantize."""
    stats_cache: str = "data/fid-stats"
    """As evaluate.stats_cache (the same folder shares the reference statistics with evaluate)."""
    download_weights: bool = False
    """As evaluate.download_weights."""

    @field_validator("dask_address")
    @classmethod
    def _dask_scheduler(cls, address: str, info: ValidationInfo) -> str:
        # An address with the thread runner would be silently unused: say so instead.
        if address and info.data.get("runner") != "dask":
            raise ValueError("a scheduler address needs runner: dask (or leave dask_address empty)")
        if address and "://" not in address:
            raise ValueError("must be a Dask scheduler address such as tcp://127.0.0.1:8786")
        return address


PublishedData = Literal["auto", "cifar10", "celeba64", "lsun-bedroom256", "ffhq64"]


class ReportParams(SamplerSettings):
    """The `report` section: the table beside the published numbers, and the pictures."""

    out: OwnFolder = "reports"
    """Folder of table.csv, table.md and the pictures (a DVC output; only the report's own files change)."""
    seed: int = Field(0, ge=0)
    device: str = "auto"
    threads: int | None = Field(1, ge=1)
    """CPU threads of torch during the report (null: torch's default). Its solves are many small products:
    on a small or busy machine one thread is much faster (64 digits samples: 2 s instead of 39 s)."""
    published: str = "paper/published.csv"
    """The published numbers with their protocols (PFGM.md section 8)."""
    table_data: PublishedData = "auto"
    """Published rows shown: auto takes the run's data set, or CIFAR-10 as a reference when it has none."""
    num_samples: int = Field(64, ge=1)
    """Samples in samples.png."""
    interpolation_pairs: int = Field(2, ge=1)
    """Pairs of test images encoded and interpolated (rows of interpolation.png)."""
    interpolation_points: int = Field(8, ge=2)
    """Points per interpolation path, both ends included."""
    temperatures: list[PositiveFloat] = Field([0.5, 0.75, 1.0, 1.25, 1.5], min_length=1)
    """Factors on the latent (columns of temperature.png); 1 is plain sampling."""
    temperature_samples: int = Field(8, ge=1)
    """Prior draws decoded at every temperature (rows of temperature.png)."""
    animation_points: int = Field(500, ge=1)
    """2D data: particles in flow.gif (the first 150 are drawn in trajectories.png)."""
    animation_frames: int = Field(40, ge=2)
    """2D data: frames of flow.gif, heights uniform in sqrt(z) from z_max to z_min (pfgm.latent.flow_heights)."""


class Params(Section):
    """All of params.yaml, every section required: a missing one is refused, never silently defaulted
    (the defaults above equal params.yaml's values: tests/test_params.py holds them together)."""

    data: DataParams
    train: TrainParams
    evaluate: EvaluateParams
    sweep: SweepParams
    report: ReportParams


ObjectiveName = Literal["pfgm", "pfgmpp"]


class Backbone(Section):
    """One backbone of the robustness experiment: a train.network with its network_kwargs."""

    name: str = Field(min_length=1)
    """Row label of the table (e.g. "NCSNv2-style (weak)")."""
    network: NetworkName
    network_kwargs: dict[str, Any] = {}
    """As train.network_kwargs, less `embedding` when `embedding` below sets it per objective."""
    embedding: dict[ObjectiveName, str] = {}
    """network_kwargs.embedding by objective: a logarithm suits PFGM's z > 0 (FieldConvNet, NCSNv2Small:
    log), while PFGM++ conditions on ln(sigma)/4, which can be <= 0 (FieldConvNet: positional,
    NCSNv2Small: raw)."""


class ObjectiveSetting(Section):
    """One objective of the robustness experiment: PFGM, or PFGM++ at some D (.inf: EDM's diffusion)."""

    name: str = Field(min_length=1)
    """Column label of the table (e.g. "PFGM++ D=128")."""
    objective: ObjectiveName
    D: AugmentedDims = 1
    """pfgmpp only: augmented dimensions, .inf for the diffusion limit."""
    train: dict[str, Any] = {}
    """Keys of the train section set for this objective only (e.g. batch_size: PFGM draws 512 charges
    and trains 128 of them, PFGM++ trains every row of a 128-row batch)."""


class RobustnessParams(Section):
    """The `robustness` section of an experiment file (experiments/*.yaml, read by flows/robustness.py):
    every backbone trained with every objective on the same data, budget and seed, then scored under one
    sampler protocol."""

    out: OwnFolder = "reports/robustness"
    """Folder of table.md, table.csv, norm_z.png, norm_z.csv (only these files are replaced)."""
    models: OwnFolder = "models/robustness"
    """Each cell trains into <models>/<backbone network>-<objective slug> (kept: a re-run resumes or skips it)."""
    backbones: list[Backbone] = Field(min_length=1)
    objectives: list[ObjectiveSetting] = Field(min_length=1)
    steps: list[StepCount] = Field([5, 10, 18], min_length=1)
    """The sampler protocol: second-order Heun with each of these step counts (NFE 2 steps - 1) on EDM's
    schedule with rho = 7, in each model's own height (PFGM: z from z_max to sweep.z_min; PFGM++: sigma
    from 80 to 0.002, then 0)."""
    norm_samples: int = Field(256, ge=2)
    """Samples whose norms are recorded for norm_z.png (with the largest step count)."""
    seed: int = Field(0, ge=0)
    """Seeds the norm-z draws (training seeds: train.seed; sampling seeds: sweep.seed)."""
    threads: int | None = Field(1, ge=1)
    """torch CPU threads for the whole experiment (null: torch's default). Small networks on a shared
    2-core machine run several times faster on one thread: a second one mostly waits."""
    published: str = "paper/backbone_robustness.csv"
    """The published reference: the PFGM paper's claim on CIFAR-10 with NCSNv2."""

    @field_validator("backbones", "objectives")
    @classmethod
    def _distinct_names(cls, entries: list) -> list:
        names = [entry.name for entry in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct, got {names}")
        return entries


def _format_errors(err: ValidationError, prefix: str, path: str | os.PathLike) -> str:
    """`<key path>: <what is wrong> (got <value>)`, errors joined by `; `, the file last: the key leads."""
    missing, lines = [], []
    for e in err.errors():
        key = ".".join(str(part) for part in (prefix, *e["loc"]) if part != "")
        if e["type"] == "missing":
            missing.append(key)
        else:
            lines.append(f"{key or '<root>'}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    if missing:  # one entry for them all: a file without sections would otherwise repeat the advice
        lines.insert(0, f"{', '.join(missing)}: missing (the project's params.yaml has every section and key)")
    return f"{'; '.join(lines)} [in {path}]"


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if raw is None:
        raise ParamsError(f"{path}: the file is empty; a params file holds the sections "
                          f"{', '.join(Params.model_fields)} (start from the project's params.yaml)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate the whole params file; ParamsError (a ValueError) names the bad key path."""
    raw = _read_yaml(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, "", path)) from None


def load_section(path: str | os.PathLike, name: str) -> Section:
    """Read and validate one section only, as its stage does; other sections are not checked."""
    if name not in Params.model_fields:
        raise ParamsError(f"unknown section {name!r}; known: {sorted(Params.model_fields)}")
    model = Params.model_fields[name].annotation
    raw = _read_yaml(path)
    if name not in raw:  # never the code's defaults in place of a forgotten section
        raise ParamsError(f"{name}: missing section in {path} (copy it from the project's params.yaml)")
    try:
        return model.model_validate(raw[name])
    except ValidationError as err:
        raise ParamsError(_format_errors(err, name, path)) from None


def load_experiment_section(path: str | os.PathLike, name: str, model: type[Section]) -> Section:
    """A section of an experiment file that params.yaml does not have (e.g. `robustness`), validated by
    `model`; ParamsError names the key path like load_section's."""
    raw = _read_yaml(path)
    if name not in raw:
        raise ParamsError(f"{name}: missing section in {path} (an experiment file such as "
                          "experiments/robustness-digits.yaml)")
    try:
        return model.model_validate(raw[name])
    except ValidationError as err:
        raise ParamsError(_format_errors(err, name, path)) from None


def load_sections(path: str | os.PathLike, *names: str) -> tuple[Section, ...]:
    """load_section for each name, in order: what one stage reads."""
    return tuple(load_section(path, name) for name in names)


def params_parser(doc: str) -> argparse.ArgumentParser:
    """The flows' command line: `--params FILE` (default params.yaml), described by the module's first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser
