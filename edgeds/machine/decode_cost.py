"""The decode cost model: seconds per generated token for a placement, so the planner can choose
between layer offload, expert offload and their mixes, and say what speed to expect.

Per token, decoding reads every weight of a layer except the routed experts, of which it reads
top-k of E; it attends over the context up to the current depth in every layer; and it crosses between
CPU and GPU at every boundary of the placement. Each of those costs time on the device that holds
the bytes. The constants are measured, not guessed (../shared/research/verified-here.md, H200 VM
with 16 cores, random-weight Q4_0 files of V2-Lite's and R1's shapes); DecodeCosts says how.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeCosts:
    """Calibration constants of the cost model, fitted (least squares on log tok/s) to eleven decode
    measurements of verified-here.md: the V2-Lite shape at 4 and 8 GiB, expert against layer
    offload, short and at depth 8192; the R1 slice with all experts on the CPU, short and at depth
    4096, and CPU-only short. The fit is within 20% of each but one: the R1 slice with its attention
    on the GPU at depth (28.7 predicted, 20.7 measured). Left out: the R1 slice CPU-only at depth
    (21.6 tok/s), which would make CPU attention 7 times cheaper per byte than the V2-Lite layer
    offload measurements at depth do; a GPU session should re-measure both.

    - cpu_bytes_per_s / gpu_bytes_per_s: weights read per token by matmuls on each device.
    - cpu_attention_bytes_per_s / gpu_attention_bytes_per_s: attention over the context, per byte
      it reads (`Geometry.attention_bytes`; layer offload at depth 8192 costs 5-6 ms per CPU layer
      of V2-Lite).
    - transition_s: one CPU<->GPU crossing of the activations.
    - expert_split_s: a fixed cost per token whenever routed experts of GPU layers run on the CPU:
      the intercept of the expert-offload measurements. Those expert plans were timed through
      `edgeds run`, the layer plans with the raw decode loop, so part of it may be the sampler's
      time: bench/gpu_offload.py now times both with the same loop; re-measure this one first.
    - fixed_s: the rest of a token (graph launch, synchronisation).
    """

    cpu_bytes_per_s: float = 56e9
    gpu_bytes_per_s: float = 2.4e12
    cpu_attention_bytes_per_s: float = 30e9
    gpu_attention_bytes_per_s: float = 300e9
    transition_s: float = 0.1e-3
    expert_split_s: float = 14e-3
    fixed_s: float = 1e-3


COSTS = DecodeCosts()


@dataclass(frozen=True)
class TokenWork:
    """What one decoded token reads and crosses under a placement."""

    gpu_weight_bytes: float
    cpu_weight_bytes: float
    gpu_attention_bytes: float
    cpu_attention_bytes: float
    transitions: int
    experts_split: bool  # routed experts of GPU layers run on the CPU


def seconds_per_token(work: TokenWork, costs: DecodeCosts = COSTS) -> float:
    return (costs.fixed_s
            + work.gpu_weight_bytes / costs.gpu_bytes_per_s
            + work.cpu_weight_bytes / costs.cpu_bytes_per_s
            + work.gpu_attention_bytes / costs.gpu_attention_bytes_per_s
            + work.cpu_attention_bytes / costs.cpu_attention_bytes_per_s
            + work.transitions * costs.transition_s
            + (costs.expert_split_s if work.experts_split else 0.0))
