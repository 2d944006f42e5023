"""The names params validation needs, importable without torch: solver methods, grid schedules, networks
and the keyword arguments each network takes.

Validating a params file must take a fraction of a second, and importing torch takes seconds, so the names
are declared here, once, as plain data. The modules that implement them take them from here
(pfgm.ode: METHODS, ADAPTIVE_METHODS, TORCHDIFFEQ_METHODS; pfgm.zsolvers: SCHEDULES, GENERIC). The
networks' argument lists copy the classes' signatures, which stay the truth: tests/test_names.py holds
every list here equal to the real classes' (and the method tables to torchdiffeq's), so they cannot drift.
"""
from __future__ import annotations

#: Our solvers (pfgm.zsolvers), stepping in z; the generic ones integrate any state (x with its
#: log-density), dpmpp_2m only the data point.
ZSOLVERS = ("euler", "heun", "dpmpp_2m")
GENERIC = frozenset({"euler", "heun"})
#: Grid schedules: uniform in ln z (the official grid), or EDM's power schedule applied to z.
SCHEDULES = ("ln_z", "power")

#: Our method names -> (torchdiffeq method, options we add): every torchdiffeq method under its own name,
#: except that its Euler, which steps in ln z, is euler_ln_z ("euler" is the official step in z), and
#: scipy's RK45 is scipy_rk45. Its explicit Adams default (order 12) diverges on a fixed grid: y' = -y
#: on [0, 1] with 100 steps ends at 0.735 instead of 0.368; order 4 is right.
TORCHDIFFEQ_METHODS: dict[str, tuple[str, dict]] = {
    "dopri8": ("dopri8", {}),
    "dopri5": ("dopri5", {}),
    "bosh3": ("bosh3", {}),
    "fehlberg2": ("fehlberg2", {}),
    "adaptive_heun": ("adaptive_heun", {}),
    "midpoint": ("midpoint", {}),
    "heun2": ("heun2", {}),
    "heun3": ("heun3", {}),
    "rk4": ("rk4", {}),
    "explicit_adams": ("explicit_adams", {"max_order": 4}),
    "implicit_adams": ("implicit_adams", {}),
    "fixed_adams": ("fixed_adams", {}),
    "euler_ln_z": ("euler", {}),
    "scipy_rk45": ("scipy_solver", {"solver": "RK45"}),
}
#: Methods that choose their own steps (tolerances); all others walk a grid of `steps` steps.
ADAPTIVE_METHODS = frozenset({"dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_rk45"})
#: Every sampler method name (pfgm.ode.sample's `method`).
METHODS = tuple(sorted({*ZSOLVERS, *TORCHDIFFEQ_METHODS}))

#: The networks pfgm.training.checkpoint.NETWORKS builds by name, each with the keyword arguments of its
#: class (EDMPrecond: its own; it passes the rest on to its backbone, BACKBONE_ARGUMENTS[model_type]).
NETWORK_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "FieldMLP": ("data_shape", "hidden", "depth", "embed_dim", "embedding", "max_positions"),
    "FieldConvNet": ("data_shape", "channels", "blocks", "embed_dim", "embedding", "groups", "max_positions"),
    "DDPMpp": ("data_shape", "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "skip_rescale",
               "embedding", "fourier_scale", "init_scale"),
    "NCSNv2Small": ("data_shape", "channels", "dilations", "embedding"),
    "EDMPrecond": ("data_shape", "label_dim", "use_fp16", "sigma_min", "sigma_max", "sigma_data", "model_type",
                   "pfgmpp", "D"),
}
NETWORKS = tuple(NETWORK_ARGUMENTS)
#: The backbones EDMPrecond wraps (pfgm.networks.edm.MODEL_TYPES), each with the keyword arguments it
#: takes from EDMPrecond's (those EDMPrecond fills in itself from its own left out).
BACKBONE_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "SongUNet": ("augment_dim", "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
                 "attn_resolutions", "dropout", "label_dropout", "embedding_type", "channel_mult_noise",
                 "encoder_type", "decoder_type", "resample_filter"),
}
