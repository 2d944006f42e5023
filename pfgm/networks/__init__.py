"""Field networks that map (x, z) to the (N+1)-dimensional PFGM field direction (FieldMLP, FieldConvNet,
DDPMpp, and NCSNv2Small, a small NCSNv2-style RefineNet), and EDM's denoiser EDMPrecond around SongUNet for PFGM++ (pfgm.networks.edm)."""

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp, from_official
from pfgm.networks.convnet import FieldConvNet
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.networks.ncsnv2 import NCSNv2Small
from pfgm.networks.songunet import SongUNet

__all__ = ["DDPMpp", "EDMPrecond", "FieldConvNet", "FieldMLP", "NCSNv2Small", "RELEASED_CONFIGS", "SongUNet", "from_official"]
