#!/usr/bin/env python3
"""tessera on the GPU against Hugging Face transformers on the same GPU (docs/cuda.md).

For each tiny model folder given (made by `tessera make-model --preset tiny --dtype bf16`), the
same prompts of random token ids go through `tessera generate --device cuda` (greedy, 16 tokens,
top-2 log-probabilities) and then, teacher-forced on tessera's tokens, through transformers'
model in bf16 on CUDA. Reported per model: the largest |delta log-prob| of the chosen tokens,
and whether the greedy tokens agree wherever transformers' top two are further apart than the
tolerance (issue #7: bf16, 2e-2). Exit status 1 when a model misses either.

usage: hf_compare.py TESSERA_BINARY MODEL_DIR... [--tol 2e-2]
"""
import json
import random
import subprocess
import sys


def tessera_run(binary, model, prompts, steps):
    cmd = [binary, "generate", "--model", model, "--device", "cuda", "--temperature", "0",
           "--max-tokens", str(steps), "--logprobs", "2", "--json", "--ignore-eos"]
    for p in prompts:
        cmd += ["--prompt-ids", ",".join(map(str, p))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    args = sys.argv[1:]
    tol = 2e-2
    if "--tol" in args:
        i = args.index("--tol")
        tol = float(args[i + 1])
        del args[i:i + 2]
    binary, models = args[0], args[1:]
    import torch
    from transformers import AutoModelForCausalLM

    failed = False
    print(f"{'model':<28} {'max |dlogprob|':>14} {'greedy compared':>16} {'agree':>6}")
    for model_dir in models:
        config = json.load(open(f"{model_dir}/config.json"))
        vocab = config["vocab_size"]
        rng = random.Random(7)
        prompts = [[rng.randrange(1, vocab) for _ in range(5 + 9 * i)] for i in range(8)]
        results = tessera_run(binary, model_dir, prompts, 16)
        try:  # transformers 5 names it dtype; 4.x torch_dtype
            hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                                      attn_implementation="eager")
        except TypeError:
            hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16,
                                                      attn_implementation="eager")
        hf = hf.cuda().eval()
        worst, compared, agreed = 0.0, 0, 0
        for prompt, res in zip(prompts, results):
            out = res["output_ids"]
            ids = torch.tensor([prompt + out], device="cuda")
            with torch.no_grad():
                logits = hf(ids).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for step, token in enumerate(out):
                row = logprobs[len(prompt) - 1 + step]
                ours = res["logprobs"][step][0]  # greedy: the chosen token is our top-1
                assert ours[0] == token
                worst = max(worst, abs(row[token].item() - ours[1]))
                top2 = torch.topk(row, 2)
                if (top2.values[0] - top2.values[1]).item() > tol:
                    compared += 1
                    agreed += int(top2.indices[0].item() == token)
        ok = worst <= tol and agreed == compared and compared > 0
        failed |= not ok
        name = model_dir.rstrip("/").split("/")[-1]
        print(f"{name:<28} {worst:>14.2e} {compared:>16} {agreed:>6} {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
