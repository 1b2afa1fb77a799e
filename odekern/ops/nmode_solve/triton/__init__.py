"""Triton backend of nmode_solve, by responsibility:

- ``constants_generated.py``: the methods' coefficients and the controller constants as
  ``tl.constexpr`` values (generated from the solver core by tools/generate_kernel_constants.py);
- ``jit_math.py``: device functions (sincos, RHS, stages, steps and their reverse mode, the
  step-size controller, per-element dopri5);
- ``kernels.py``: the ``_nmode_*_kernel`` programs;
- ``launch.py``: the backend contract of config.py (``supports``, ``forward``, ``backward``) and
  the host-driven global step control;
- ``aot.py``: the variants tools/gpucheck.py compiles ahead of time, signatures derived from the
  kernels.
"""

from odekern.ops.nmode_solve.triton.aot import aot_variants
from odekern.ops.nmode_solve.triton.kernels import (  # noqa: F401 - the kernels of this backend
    _nmode_adjoint_bwd_kernel, _nmode_global_attempt_kernel, _nmode_global_d2_kernel, _nmode_global_init_kernel,
    _nmode_list_bwd_kernel, _nmode_list_fwd_kernel, _nmode_pe_bwd_kernel, _nmode_pe_fwd_kernel)
from odekern.ops.nmode_solve.triton.launch import backward, forward, supports

__all__ = ["aot_variants", "backward", "forward", "supports"]
