"""Shared Typer option definitions for the commands that load a model (run, chat, batch, serve)."""

from __future__ import annotations

import typer

MOE_OFFLOAD_HELP = (
    "Where the routed experts of a MoE model go: auto (fill the GPU, the rest of the experts in CPU RAM), "
    "all (every layer's experts in CPU RAM), none (plain layer offload), or N (experts of the first N layers "
    "in CPU RAM, like llama.cpp's --n-cpu-moe)."
)


def moe_offload_option(default: str = "auto"):
    """`--moe-offload auto|all|none|N`; pass the value to `edgeds.placement.plan_placement`."""
    return typer.Option(default, "--moe-offload", help=MOE_OFFLOAD_HELP, metavar="auto|all|none|N")


MoeOffload = moe_offload_option()
