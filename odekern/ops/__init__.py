"""Fused ops. One folder per op: reference.py (the spec), op.py (torch.library custom op,
fake and autograd registration), cpp.py (C++ / CUDA extension launchers), triton.py."""

# Importing the package registers every op, its backends and the fakes of its C++ kernels.
from odekern.ops import nmode_solve, rk_stage  # noqa: E402,F401
