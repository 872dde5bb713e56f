"""Request workloads for kvsim: trace readers, transforms, synthetic load, sessions, prompt tokens.

trace = workloads.read_trace("AzureLLMInferenceTrace_conv.csv")        # any supported format
trace.requests     # DataFrame: request_id, arrival_s, prompt_tokens, output_tokens, session_id,
                   #            turn, parent_id, prefix_block_ids, model
trace.summary      # rows read / kept / skipped by reason
"""

from importlib.resources import files
from pathlib import Path

from workloads.errors import TraceFormatError
from workloads.materialize import materialize_prompts, materialize_session
from workloads.readers import READERS, detect_format, read_trace
from workloads.sessions import SessionScript, Turn, session_scripts, sessions_to_trace
from workloads.synthetic import (
    ConstantArrivals,
    EmpiricalLengths,
    EmpiricalRequests,
    FixedLengths,
    GammaArrivals,
    IndependentLengths,
    LognormalLengths,
    PoissonArrivals,
    UniformLengths,
    synthetic_trace,
)
from workloads.table import COLUMNS, Trace, TraceSummary
from workloads.transforms import cap_lengths, sample, scale_rate, window, with_arrivals

# The first 2000 requests of the Azure 2023 conversation trace, shipped for the default demo.
DEFAULT_TRACE = Path(str(files("workloads") / "data" / "azure_conv_2023_first2000.csv"))

__all__ = [
    "COLUMNS",
    "DEFAULT_TRACE",
    "READERS",
    "ConstantArrivals",
    "EmpiricalLengths",
    "EmpiricalRequests",
    "FixedLengths",
    "GammaArrivals",
    "IndependentLengths",
    "LognormalLengths",
    "PoissonArrivals",
    "SessionScript",
    "Trace",
    "TraceFormatError",
    "TraceSummary",
    "Turn",
    "UniformLengths",
    "cap_lengths",
    "detect_format",
    "materialize_prompts",
    "materialize_session",
    "read_trace",
    "sample",
    "scale_rate",
    "session_scripts",
    "sessions_to_trace",
    "synthetic_trace",
    "window",
    "with_arrivals",
]
