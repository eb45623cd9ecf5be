"""The Examples section of every command's --help, as data: command name → example lines."""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "run": (
        'edgeds run r1-distill-qwen-1.5b "How many r\'s are in strawberry?"',
        'echo "Summarise: ..." | edgeds run model.gguf --hide-reasoning > answer.txt',
        'edgeds run deepseek-r1:7b "Prove that √2 is irrational" --max-tokens 8192 --min-p 0.1',
        'edgeds run model.gguf "Say hello" --json --repeat-penalty 1.1 --threads 4',
        'edgeds run model.gguf "Write a haiku" --lora style.gguf:0.8',
    ),
    "chat": (
        "edgeds chat",
        "edgeds chat r1-distill-qwen-7b:Q8_0 --n-ctx 16384",
        'edgeds chat model.gguf --system "Answer briefly." --no-think-prefix',
    ),
    "batch": (
        "edgeds batch prompts.jsonl -o answers.jsonl -m r1-distill-qwen-7b --parallel 8",
        "edgeds batch prompts.jsonl -o answers.jsonl -m model.gguf --temperature 0 --max-tokens 2048",
        "edgeds batch prompts.jsonl -o answers.jsonl --endpoint http://127.0.0.1:8080",
        "edgeds batch prompts.jsonl -o answers.jsonl --endpoint http://gpu1:8080 --endpoint http://gpu2:8080 --tries 3",
    ),
    "serve": (
        "edgeds serve r1-distill-qwen-7b --port 8080",
        "edgeds serve model.gguf --parallel 8 --n-ctx 8192 --api-key secret --host 0.0.0.0",
        "edgeds serve model.gguf --alias my-model --cors-origin http://localhost:3000",
    ),
    "convert": (
        "edgeds convert deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B -o r1-1.5b.gguf --quant Q4_K_M",
        "edgeds convert ./my-checkpoint -o model-f16.gguf --verify",
        "edgeds convert deepseek-ai/DeepSeek-V2-Lite-Chat -o v2-lite.gguf --quant moe-q4 --split-experts",
        "edgeds convert ./base-checkpoint -o tuned.gguf --merge-lora ./my-lora --quant Q4_K_M",
    ),
    "convert-lora": (
        "edgeds convert-lora ./my-lora -o my-lora.gguf",
        "edgeds convert-lora owner/r1-qwen-7b-lora -o lora.gguf --base deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    ),
    "quantize": (
        "edgeds quantize --list",
        "edgeds quantize model-f16.gguf model-q4.gguf Q4_K_M",
        "edgeds quantize model-f16.gguf moe-q3 --dry-run",
        "edgeds quantize model-q8_0.gguf model-q4.gguf Q4_K_M --allow-requantize",
    ),
    "eval": (
        "edgeds eval model-q4.gguf --ref model-f16.gguf --text wiki.txt",
    ),
    "imatrix": (
        "edgeds imatrix model-f16.gguf -o imatrix.gguf",
        "edgeds imatrix model-f16.gguf --text corpus.txt --chunks 100 -o imatrix.gguf",
    ),
    "pull": (
        "edgeds pull r1-distill-qwen-7b",
        "edgeds pull r1-distill-qwen-14b:Q8_0 --yes",
        "edgeds pull deepseek-r1:32b",
    ),
    "add": (
        "edgeds add ~/Downloads/DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf --as r1-distill-qwen-7b:Q4_K_M",
        "edgeds add ./my-finetune.gguf --as my-model",
    ),
    "list": (
        "edgeds list",
        "edgeds list --local",
    ),
    "show": (
        "edgeds show r1-distill-qwen-1.5b",
        "edgeds show model.gguf --template",
    ),
    "rm": (
        "edgeds rm r1-distill-qwen-7b:Q8_0",
        "edgeds rm my-model",
    ),
    "doctor": (
        "edgeds doctor",
        "edgeds doctor --ram 64 --vram 24",
    ),
    "fit": (
        "edgeds fit r1-distill-qwen-32b --n-ctx 32768",
        "edgeds fit r1:UD-IQ1_S --vram 24 --ram 128 --n-ctx 8192",
        "edgeds fit r1 --recipe moe-iq1 --vram 24 --ram 128 --n-ctx 8192",
    ),
    "bench": (
        "edgeds bench r1-distill-qwen-1.5b",
        "edgeds bench model.gguf",
    ),
}


def epilog(command: str) -> str | None:
    """The Examples section for `command`'s help (`\\b` keeps click from re-wrapping the lines);
    None for a command without examples (tests/test_cli_polish.py fails on it)."""
    lines = EXAMPLES.get(command)
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines) if lines else None
