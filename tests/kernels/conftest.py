"""Kernel tests run the Triton kernels on the CPU under Triton's interpreter.

Triton fixes interpreted-or-compiled when it is imported, so TRITON_INTERPRET=1 must be set
before the first `import triton` of the process. Importing `kernels` does that on a host
without CUDA; this sets it too, for the case where this folder is collected first.
"""

import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
