"""Triton kernels, one file per op family. Importing this package needs triton; the ops layer
(effnet_kernels.ops) imports it lazily, only when the "triton" backend is asked for."""
