"""Generation speed: nlpkit's `generate` versus `transformers`' `generate`, GPT-2 small, Llama, BART-base and Marian sizes.

A random-weight GPT-2 of GPT-2 small's size (12 layers, 768 wide, 50,257
tokens, 124M parameters) is made with `transformers` and saved to a temporary
folder; both libraries load that folder. Each measurement runs in a fresh
child process (imports and loading outside the timed region, one untimed
warm-up call), nlpkit and transformers alternating, so each side's peak
resident memory is its own. Settings per configuration: a 32-token prompt,
128 new tokens (EOS disabled so every row makes all of them), and:

- greedy at batch 1 and batch 8 (fp32 on both sides);
- beam search with 4 beams at batch 1 (fp32);
- nlpkit with bfloat16 weights at batch 1, against transformers in fp32 and in bf16;
- greedy at batch 1 and batch 8 on a random Llama of about the same size
  (12 layers, 768 wide, grouped-query attention with 4 key/value heads,
  SwiGLU 2048 wide, 32,000 tokens; 110M parameters), fp32;
- on request (`--configs bart-beam-4,marian-beam-4`), translation-style beam
  search: random checkpoints of BART-base's and of a Marian opus-mt model's
  size, 8 sources of 32 tokens, 4 beams, 64 new tokens, in sentences per second.

Tokens per second are new tokens (rows times 128) over the wall time of the
whole call (prompt pass included); medians over `--repeats` runs per side,
and the ratio nlpkit / transformers (above 1: nlpkit is faster). Memory is the
peak RSS during the timed call (the weights included; Linux resets the peak
after loading through /proc/self/clear_refs), and how much the call added to
the RSS it started from.
The greedy batch-1 outputs of the two sides are compared once.

Run from the repository root (needs `transformers`, the `test` extra):

    python benchmarks/generate.py                       # the full comparison (about 30 min on 2 CPU cores)
    python benchmarks/generate.py --new-tokens 16 --repeats 1 --configs greedy-1,beam-4   # a quick check
    python benchmarks/generate.py --configs bart-beam-4,marian-beam-4                      # seq2seq beam search
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _children import peak_rss_mib, run_child

# name -> (checkpoint, batch, num_beams, nlpkit dtype, transformers dtype, new tokens or None for --new-tokens)
CONFIGS = {
    "greedy-1": ("gpt2", 1, 1, "float32", "float32", None),
    "greedy-8": ("gpt2", 8, 1, "float32", "float32", None),
    "beam-4": ("gpt2", 1, 4, "float32", "float32", None),
    "bf16-vs-fp32": ("gpt2", 1, 1, "bfloat16", "float32", None),
    "bf16-vs-bf16": ("gpt2", 1, 1, "bfloat16", "bfloat16", None),
    "bf16-8-vs-bf16": ("gpt2", 8, 1, "bfloat16", "bfloat16", None),
    "llama-bf16-1": ("llama", 1, 1, "bfloat16", "bfloat16", None),
    "llama-greedy-1": ("llama", 1, 1, "float32", "float32", None),
    "llama-greedy-8": ("llama", 8, 1, "float32", "float32", None),
    # Translation-style beam search: 8 sources, 4 beams, 64 new tokens (issue 7's benchmark).
    "bart-beam-4": ("bart", 8, 4, "float32", "float32", 64),
    "marian-beam-4": ("marian", 8, 4, "float32", "float32", 64),
}
DEFAULT_CONFIGS = ["greedy-1", "greedy-8", "beam-4", "bf16-vs-fp32", "bf16-vs-bf16", "llama-greedy-1", "llama-greedy-8"]
SEQ2SEQ = ("bart", "marian")
PROMPT_TOKENS = 32


def make_checkpoint(name: str, folder: Path) -> None:
    """A random-weight checkpoint of a real model's size, without an end-of-sequence token.

    gpt2: GPT-2 small (124M); llama: a Llama of GPT-2 small's depth and width
    (110M); bart: BART-base (139M); marian: opus-mt-en-de's shape (74M,
    6 + 6 layers, 512 wide, 58,101 tokens).
    """
    import torch
    import transformers

    torch.manual_seed(0)
    no_eos = dict(bos_token_id=None, eos_token_id=None, forced_eos_token_id=None)
    if name == "gpt2":
        config = transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
                                         bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(config)
    elif name == "llama":
        config = transformers.LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                                          max_position_embeddings=2048, **no_eos)
        model = transformers.LlamaForCausalLM(config)
    elif name == "bart":
        config = transformers.BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                         encoder_attention_heads=12, decoder_attention_heads=12,
                                         encoder_ffn_dim=3072, decoder_ffn_dim=3072, decoder_start_token_id=2,
                                         pad_token_id=1, **no_eos)
        model = transformers.BartForConditionalGeneration(config)
    else:
        config = transformers.MarianConfig(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
                                           encoder_attention_heads=8, decoder_attention_heads=8,
                                           encoder_ffn_dim=2048, decoder_ffn_dim=2048, decoder_start_token_id=58100,
                                           pad_token_id=58100, **no_eos)
        model = transformers.MarianMTModel(config)
    model.save_pretrained(folder)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return peak_rss_mib()  # no /proc: the peak since start


def _reset_peak() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(side: str, folder: str, config: str, new_tokens: int) -> None:
    import torch

    checkpoint, batch, beams, nlpkit_dtype, hf_dtype, fixed_tokens = CONFIGS[config]
    new_tokens = fixed_tokens or new_tokens
    seq2seq = checkpoint in SEQ2SEQ
    generator = torch.Generator().manual_seed(1)
    vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    prompts = torch.randint(100, min(50000, vocab), (batch, PROMPT_TOKENS), generator=generator)
    options = dict(max_new_tokens=new_tokens, num_beams=beams, do_sample=False)
    pad = json.loads((Path(folder) / "config.json").read_text()).get("pad_token_id") or 0  # GPT-2 has none
    if side == "nlpkit":
        from nlpkit.backbones import from_pretrained, pack_for_cpu_inference
        from nlpkit.backbones.checkpoints import generation_defaults
        from nlpkit.generation import generate_ids, resolve_options

        model = from_pretrained(folder, dtype=nlpkit_dtype)
        pack_for_cpu_inference(model, release=True)  # as nlpkit.load does
        resolved = resolve_options({**options, "pad_token_id": pad}, generation_defaults(Path(folder)))
        rows = prompts.tolist()

        def call() -> list[list[int]]:
            return [found[0] for found in generate_ids(model, rows, resolved)]
    else:
        import transformers

        auto = transformers.AutoModelForSeq2SeqLM if seq2seq else transformers.AutoModelForCausalLM
        model = auto.from_pretrained(folder, dtype=getattr(torch, hf_dtype)).eval()
        mask = torch.ones_like(prompts)

        def call() -> list[list[int]]:
            with torch.inference_mode():
                out = model.generate(prompts, attention_mask=mask, pad_token_id=pad, **options)
            # The output starts with the prompt (decoder) or the decoder start token (encoder-decoder).
            return out[:, 1 if seq2seq else PROMPT_TOKENS:].tolist()

    call()  # warm-up: first-call allocations and kernel selection
    gc.collect()
    try:  # glibc keeps the freed buffers of loading mapped; hand them back so RSS is what the model holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    # Loading peaks differently on each side (nlpkit holds the file and the module at once for a moment):
    # the peak is measured from here, over the timed call, so it is the weights plus the generation's memory.
    _reset_peak()
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    outputs = call()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    print(json.dumps({"tokens_per_s": batch * new_tokens / seconds, "sentences_per_s": batch / seconds,
                      "seconds": seconds, "peak_rss_mb": peak,
                      "call_added_mb": peak - before, "first_output": outputs[0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, of: {', '.join(CONFIGS)} (default: the GPT-2 and Llama ones)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", help="an existing folder for every config (default: random checkpoints of "
                                         "each config's model, made in a temp folder)")
    parser.add_argument("--child", choices=["nlpkit", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.configs, args.new_tokens)
        return
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"unknown config {unknown[0]}; known: {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[str, str] = {}
        print(f"prompt {PROMPT_TOKENS} tokens, {args.new_tokens} new (64 for the seq2seq configs), "
              f"{args.repeats} repeats\n")
        header = (f"{'config':<14}{'nlpkit tok/s':>14}{'hf tok/s':>11}{'ratio':>8}{'nlpkit MB':>11}{'hf MB':>9}"
                  f"{'nlpkit +MB':>12}{'hf +MB':>9}{'nlpkit sent/s':>15}{'hf sent/s':>11}")
        rows = []
        for config in configs:
            checkpoint = CONFIGS[config][0]
            if checkpoint not in folders:
                folders[checkpoint] = args.folder or str(Path(tmp) / f"{checkpoint}-random")
                if args.folder is None:
                    make_checkpoint(checkpoint, Path(folders[checkpoint]))
            folder = folders[checkpoint]
            runs: dict[str, list[dict]] = {"nlpkit": [], "transformers": []}
            for repeat in range(args.repeats):
                order = ["nlpkit", "transformers"] if repeat % 2 == 0 else ["transformers", "nlpkit"]
                for side in order:
                    runs[side].append(run_child(__file__, ["--child", side, "--folder", folder, "--configs", config,
                                                           "--new-tokens", str(args.new_tokens)]))
            ours, theirs = runs["nlpkit"], runs["transformers"]
            speed = {side: statistics.median(r["tokens_per_s"] for r in rs) for side, rs in runs.items()}
            memory = {side: statistics.median(r["peak_rss_mb"] for r in rs) for side, rs in runs.items()}
            added = {side: statistics.median(r["call_added_mb"] for r in rs) for side, rs in runs.items()}
            sentences = {side: statistics.median(r["sentences_per_s"] for r in rs) for side, rs in runs.items()}
            same = ours[0]["first_output"] == theirs[0]["first_output"]
            rows.append(f"{config:<14}{speed['nlpkit']:>14.1f}{speed['transformers']:>11.1f}"
                        f"{speed['nlpkit'] / speed['transformers']:>8.2f}{memory['nlpkit']:>11.0f}"
                        f"{memory['transformers']:>9.0f}{added['nlpkit']:>12.0f}{added['transformers']:>9.0f}"
                        f"{sentences['nlpkit']:>15.2f}{sentences['transformers']:>11.2f}"
                        + ("" if same or "bf16" in config else "   (outputs differ!)"))
            print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
        print("\nratio = nlpkit tokens/s over transformers tokens/s (above 1: nlpkit faster); MB = peak RSS during "
              "the timed call, +MB = what the call added to the RSS it started from")


if __name__ == "__main__":
    main()
