"""Networks that map (x, z) to the (N+1)-dimensional PFGM field direction."""

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp, from_official
from pfgm.networks.convnet import FieldConvNet
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP
from pfgm.networks.songunet import SongUNet

__all__ = ["DDPMpp", "EDMPrecond", "FieldConvNet", "FieldMLP", "RELEASED_CONFIGS", "SongUNet", "from_official"]
