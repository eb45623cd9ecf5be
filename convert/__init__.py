"""edgeds.convert: Hugging Face safetensors checkpoints → GGUF files llama.cpp loads.

    from edgeds.convert import convert, convert_and_quantize
    convert("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "r1-1.5b.gguf", outtype="q8_0")
    convert_and_quantize("deepseek-ai/DeepSeek-V2-Lite-Chat", "v2-lite.gguf", "moe-q4")

The pipeline: resolve the source folder (downloading config, tokenizer and safetensors only) →
read headers (checkpoint.py) → pick the architecture module (arch/) → plan every output tensor
(plan.py) and check nothing is left over → size the file and check the disk → stream tensor by
tensor into `OUT.partial` (gguf_writer.py) → rename to OUT. Any failure removes the partial file.
`convert_and_quantize` goes on from a staged F16 file to llama.cpp's quantizer (quantize.py) and,
for MoE models, the expert-offload layout (layout.py).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeds.errors import ConversionError, UsageError

__all__ = ["OUTTYPES", "convert", "convert_and_quantize", "prepare", "resolve_source"]

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DOWNLOAD_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "*.safetensors", "model.safetensors.index.json",
]
DISK_MARGIN = 16 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(src: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local checkpoint folder, or a hub repo id downloaded (config, tokenizer, safetensors only)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    text = str(src)
    if path.exists() or not _REPO_ID.match(text):
        raise ConversionError(f"{text}: not a checkpoint folder (nor a Hugging Face repo id like owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, revision=revision, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as err:  # the hub raises many kinds; each means the same to the user
        raise ConversionError(f"{text}: cannot download from the Hugging Face hub ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no detail'}); pass a local folder instead") from None


def source_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder the converter reads (DOWNLOAD_PATTERNS)."""
    return [p for pattern in DOWNLOAD_PATTERNS for p in folder.glob(pattern)]


def _general(folder: Path, cfg: Mapping[str, Any], arch: str, file_type: int) -> dict[str, object]:
    name = str(cfg.get("_name_or_path") or folder.name).rstrip("/").split("/")[-1] or folder.name
    return {
        "general.architecture": arch,
        "general.type": "model",
        "general.name": name,
        "general.file_type": file_type,
        "general.quantization_version": 2,
    }


def prepare(folder: Path, outtype: str, extra_metadata: Mapping[str, object] | None = None, adapter=None):
    """Everything short of writing: (checkpoint, plans, writer with metadata and tensor table).
    `adapter`: a PeftAdapter to merge into the weights (convert/merge.py)."""
    from edgeds.convert import gguf_writer as gw
    from edgeds.convert.arch import module_for
    from edgeds.convert.checkpoint import Checkpoint
    from edgeds.convert.plan import check_shapes
    from edgeds.convert.tokenizer import vocab_metadata

    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    ckpt = Checkpoint(folder)
    if adapter is not None:
        from edgeds.convert.merge import merged

        ckpt = merged(ckpt, adapter)
    cfg = ckpt.config
    module = module_for(cfg, where=str(folder / "config.json"))
    arch_meta = module.metadata(cfg)
    plans = module.plan(cfg, ckpt)
    _check_coverage(ckpt, plans, _skip_pattern(module, cfg))
    check_shapes(plans, *module.shapes(cfg), where=str(folder / "config.json"))
    vocab = vocab_metadata(folder, cfg.get("vocab_size"))

    ttype, file_type = gw.OUTTYPES[outtype]
    writer = gw.GGUFWriter()
    for key, value in {**_general(folder, cfg, module.GGUF_ARCH, file_type), **arch_meta, **vocab,
                       **(extra_metadata or {})}.items():
        writer.add(key, value)
    for p in plans:
        writer.add_tensor(p.name, p.shape, _tensor_type(p, ttype))
    return ckpt, plans, writer


def _tensor_type(plan, ttype):
    from edgeds.convert.gguf_writer import Q8_0_BLOCK, TensorType

    if plan.keep_f32 or len(plan.shape) == 1:
        return TensorType.F32
    if ttype == TensorType.Q8_0 and plan.shape[-1] % Q8_0_BLOCK:
        return TensorType.F16  # Q8_0 blocks run along rows; a row that does not fill them stays F16
    return ttype


def _skip_pattern(module, cfg):
    if hasattr(module, "skip"):
        return module.skip(cfg)
    return getattr(module, "SKIP", None)


def _check_coverage(ckpt, plans, skip) -> None:
    consumed = {s for p in plans for s in p.sources}
    left = [n for n in ckpt.names if n not in consumed and not (skip is not None and skip.search(n))]
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise ConversionError(f"{ckpt.folder}: tensor {left[0]!r} maps to no GGUF tensor{more}")
    seen: set[str] = set()
    for p in plans:
        if p.name in seen:
            raise ConversionError(f"{ckpt.folder}: two source tensors map to GGUF tensor {p.name!r}")
        seen.add(p.name)


def _check_disk(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed + DISK_MARGIN:
        raise ConversionError(f"{out}: not enough disk space: the GGUF needs {needed / 2**20:.1f} MiB, "
                              f"{free / 2**20:.1f} MiB free in {out.parent}")


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    outtype: str = "f16",
    *,
    verify: bool = False,
    progress: bool = True,
    revision: str | None = None,
    extra_metadata: Mapping[str, object] | None = None,
    log: Callable[[str], None] | None = None,
    merge_lora: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert a Hugging Face checkpoint to one GGUF file.

    Args:
        src: a local folder with config.json, tokenizer.json and safetensors, or a hub repo id.
        out: the GGUF path; written as `out.partial` and renamed when complete.
        outtype: f32, f16, bf16 or q8_0 (norms, biases and other 1-D tensors stay F32).
        verify: afterwards, compare the GGUF in llama.cpp with the source (see verify.py).
        progress: a tqdm bar on stderr (tensors and bytes).
        revision: hub revision when `src` is a repo id.
        extra_metadata: more GGUF keys (e.g. edgeds.* layout keys).
        log: where verification lines go (default: stderr).
        merge_lora: a PEFT LoRA adapter (folder or hub repo id) to bake into the weights
            (W + scale·B·A in float32, before the outtype rounds it).

    Returns:
        The path of the finished GGUF.

    Raises:
        ConversionError: anything wrong with the input or the disk; no OUT or OUT.partial is left.
    """
    from edgeds.convert.outputs import check_output, partial

    out = Path(out).expanduser()
    partial_path = partial(out)
    check_output(out, error=ConversionError)
    if outtype not in OUTTYPES:
        raise ConversionError(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    adapter = None
    if merge_lora is not None:
        from edgeds.convert.adapter import PeftAdapter, resolve_adapter

        if verify:
            raise UsageError("--verify compares with the source model, which the merged adapter changes: "
                             "leave out --verify or --merge-lora")
        adapter = PeftAdapter(resolve_adapter(merge_lora))
    folder = resolve_source(src, revision=revision)
    check_output(out, source_files(folder) + (adapter.files if adapter else []), error=ConversionError)
    ckpt, plans, writer = prepare(folder, outtype, extra_metadata, adapter)
    _check_disk(out, writer.total_size)
    _write(ckpt, plans, writer, partial_path, progress)
    os.replace(partial_path, out)
    if verify:
        from edgeds.convert.verify import verify as run_verify

        report = run_verify(out, folder)
        for line in report.lines():
            (log or (lambda s: print(s, file=sys.stderr)))(line)
        report.raise_if_failed(out)
    return out


def convert_and_quantize(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    quant: str,
    *,
    split_experts: bool = False,
    verify: bool = False,
    progress: bool = True,
    revision: str | None = None,
    log: Callable[[str], None] | None = None,
    merge_lora: str | os.PathLike[str] | None = None,
) -> tuple[Path, ...]:
    """Convert to F16 in a staged file beside `out`, quantize it with `quant` (a recipe or llama.cpp
    type) into `out`, in the expert-offload layout for MoE models (split in two files with
    `split_experts`), and remove the staged file. Returns the written file(s).

    Raises:
        UsageError: `quant` needs an importance matrix (found before anything is converted).
        ConversionError, QuantizeError: as `convert` and `quantize.quantize_file`.
    """
    from edgeds.convert.outputs import check_output, discard
    from edgeds.convert.quantize import quantize_file
    from edgeds.convert.recipes import get_recipe

    out = Path(out).expanduser()
    if get_recipe(quant).needs_imatrix:
        raise UsageError(f"--quant {quant} needs an importance matrix: convert, then `edgeds quantize --imatrix FILE`")
    check_output(out, error=ConversionError)
    folder = resolve_source(src, revision=revision)
    check_output(out, source_files(folder), error=ConversionError)
    staged = out.with_name(out.name + ".f16.partial")  # never looks like a finished file
    try:
        convert(folder, staged, "f16", verify=verify, progress=progress, log=log, merge_lora=merge_lora)
        return quantize_file(staged, out, quant, split_experts=split_experts)
    finally:
        discard(staged)


def _pieces(ckpt, plan, ttype):
    """The plan's float32 pieces, or for an unchanged BF16 source going to F16/BF16 its stored bits."""
    from edgeds.convert.gguf_writer import BF16Bits, TensorType
    from edgeds.convert.plan import PIECE_BYTES

    if plan.raw is not None and ckpt.dtype(plan.raw) == "BF16" and ttype in (TensorType.F16, TensorType.BF16):
        return (BF16Bits(bits) for bits in ckpt.iter_bf16_bits(plan.raw, PIECE_BYTES // 4))
    return plan.produce(ckpt)


def _write(ckpt, plans, writer, partial_path: Path, progress: bool) -> None:
    from tqdm import tqdm

    from edgeds.convert.outputs import discard

    bar = tqdm(total=sum(t.nbytes for t in writer.tensors), unit="B", unit_scale=True, unit_divisor=1024,
               desc="converting", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        try:
            writer.open(partial_path)
        except OSError as err:
            raise ConversionError(f"{partial_path}: cannot create ({err.strerror or err})") from None
        infos = writer.tensors
        for i, (p, info) in enumerate(zip(plans, infos), start=1):
            bar.set_postfix_str(f"tensor {i}/{len(plans)}", refresh=False)
            try:
                bar.update(writer.write(p.name, _pieces(ckpt, p, info.ttype)))
            except OSError as err:
                if err.errno == 28:  # ENOSPC: the disk filled up after the check
                    raise ConversionError(f"{partial_path}: the disk is full") from None
                raise ConversionError(f"{partial_path}: write failed ({err.strerror or err})") from None
        writer.close()
    except BaseException:
        try:
            writer.close()
        except OSError:
            pass  # the error being raised says more
        discard(partial_path)
        raise
    finally:
        bar.close()
