"""nn.Modules: ``ODEBlock`` (any order, any RHS) and ``NmODE`` (the fused nmODE block)."""

from odekern.nn.nmode import NmODE
from odekern.nn.ode_block import ODEBlock

__all__ = ["NmODE", "ODEBlock"]
