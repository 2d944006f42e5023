"""Networks that map (x, z) to the (N+1)-dimensional PFGM field direction."""

from pfgm.networks.ddpmpp import RELEASED_CONFIGS, DDPMpp, from_official

__all__ = ["DDPMpp", "RELEASED_CONFIGS", "from_official"]
