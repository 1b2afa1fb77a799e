"""Pure-PyTorch reference ODE solvers: tableaus, steppers, controllers and the method registry.

``odekern.odeint`` is the entry point; this package holds its parts (see docs/design.md, principle 7).
"""

from odekern.solvers.base import SolveStatus
from odekern.solvers.checks import NonFiniteError, SolveError
from odekern.solvers.registry import METHODS

__all__ = ["METHODS", "NonFiniteError", "SolveError", "SolveStatus"]
