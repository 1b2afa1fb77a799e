"""Fused ops. One folder per op: reference.py (the spec), op.py (torch.library custom op,
fake and autograd registration), cpp.py (C++ / CUDA extension launchers), triton.py."""
