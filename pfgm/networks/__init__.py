"""Networks that map (x, z) to the (N+1)-dimensional PFGM field direction."""

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp, from_official
from pfgm.networks.convnet import FieldConvNet
from pfgm.networks.edm import EDMPrecond
from pfgm.networks.mlp import FieldMLP

__all__ = ["DDPMpp", "EDMPrecond", "FieldConvNet", "FieldMLP", "RELEASED_CONFIGS", "from_official"]
