"""odekern: fused kernels for neural-ODE blocks.

Drop-in for torchdiffeq::

    from odekern import odeint_adjoint as odeint

Public API (explicit re-exports only):
- ``odeint`` / ``odeint_adjoint``: torchdiffeq-compatible solvers.
- ``odeint_checkpointed``: ``odeint`` whose backward pass retakes steps from a few stored states
  (backprop's gradient, memory flat in the number of steps).
- ``odeint_event``: solve until an event, with a differentiable event time (torchdiffeq's API).
- ``odeint_dense``: the dense output of a whole adaptive solve (torchdiffeq's API).
- ``ODEBlock``: an nn.Module solving an ODE of any order with a chosen gradient mode.
- ``nmode_solve`` / ``NmODE``: the fused nmODE solve ``dy/dt = -y + sin^2(y + g)``.
- ``backends()`` / ``use_backend()``: which kernel backends exist here and forcing one.
"""

from odekern._ext import build_info
from odekern.dispatch import backends, use_backend
from odekern.nn import NmODE, ODEBlock
from odekern.adjoint import odeint_adjoint
from odekern.checkpoint import odeint_checkpointed
from odekern.odeint import odeint
from odekern.events import odeint_event
from odekern.dense import odeint_dense
from odekern.ops.nmode_solve import nmode_solve

__version__ = "0.1.0"

__all__ = [
    "NmODE",
    "ODEBlock",
    "backends",
    "build_info",
    "nmode_solve",
    "odeint",
    "odeint_adjoint",
    "odeint_checkpointed",
    "odeint_dense",
    "odeint_event",
    "use_backend",
]
