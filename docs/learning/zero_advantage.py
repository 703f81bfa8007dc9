"""Where GRPO goes when a format break gives every completion the same reward (docs/learning.md, *Stability*).

With every advantage zero the policy term of TRL's loss vanishes and what is left is beta * KL(pi || ref) - c * H(pi)
(the bias-corrected k3 estimate has the gradient of the exact reverse KL). Per position its minimum is the reference
tempered, pi proportional to ref ** (beta / (beta + c)): with c > 0, mass moves from the template token onto the
tokenizer's ~150 k tail tokens. This reads the reference (a warm-up model of the check) teacher-forced on its own
template at held-out prompts, and prints, for each entropy coefficient, that minimum's chance of writing the whole
template, its entropy per token and its KL to the reference, beside the reference itself (c = 0).

    python docs/learning/zero_advantage.py --model WARMUP_DIR --data DATA_DIR [--records 32]

WARMUP_DIR: a check's `seed*/sft` (the GRPO reference); DATA_DIR: its `data` folder. CPU, about a minute.
"""

from __future__ import annotations

import argparse
import json
import random

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--records", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--coefs", type=float, nargs="+", default=[0.0, 0.005, 0.02])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.data.dataset import MediaLoader
    from vqrl.data.media import VisionSpec
    from vqrl.data.prompts import PromptConfig, build_messages
    from vqrl.eval.records import load_eval_records
    from vqrl.learning.warmup import format_target
    from vqrl.modeling import vision as V
    from vqrl.modeling.teacher_forcing import model_inputs

    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    processor = AutoProcessor.from_pretrained(a.model)
    model = AutoModelForImageTextToText.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    tok = processor.tokenizer
    records, problems = load_eval_records([f"{a.data}/heldout.json"], a.data, None)
    assert not problems, problems[:3]
    records = records[: a.records]
    loader = MediaLoader(VisionSpec.for_processor(processor), a.data, None)
    cfg = PromptConfig(think=True)
    seqs, visions, spans, digit_pos = [], [], [], []
    for r in records:
        ids, vision = V.encode_prompt(processor, build_messages(r, loader.parts(r), cfg))
        target = format_target(rng.uniform(1, 5)) + tok.eos_token  # the warm-up's own kind of answer
        comp = tok.encode(target, add_special_tokens=False)
        seqs.append(ids + comp)
        visions.append(vision)
        spans.append((len(ids), len(comp)))
        digit_pos.append({i for i, t in enumerate(comp) if tok.decode([t]).strip().isdigit()})
    with torch.no_grad():
        inputs = model_inputs(model, seqs, visions, tok.pad_token_id)
        logits = model(**inputs).logits.float()
    width = inputs["input_ids"].size(1)
    rows = []
    for coef in a.coefs:
        alpha = a.beta / (a.beta + coef)
        p_template, entropy, kl, n_tok = [], 0.0, 0.0, 0
        for b, (start, n) in enumerate(spans):
            offset = width - len(seqs[b])  # left padding
            pos = torch.arange(offset + start - 1, offset + start - 1 + n)  # logits that predict each completion token
            ref = torch.log_softmax(logits[b, pos], -1)
            pi = torch.log_softmax(alpha * ref, -1)
            target = torch.tensor(seqs[b][start:start + n])
            chosen = pi.gather(1, target[:, None])[:, 0]
            keep = torch.tensor([i not in digit_pos[b] for i in range(n)])  # the template, not the score's digits
            p_template.append(float(chosen[keep].sum().exp()))
            entropy += float(-(pi.exp() * pi).sum(-1).sum())
            kl += float((pi.exp() * (pi - ref)).sum(-1).sum())
            n_tok += n
        rows.append({"entropy_coef": coef, "alpha": alpha, "p_whole_template": sum(p_template) / len(p_template),
                     "p_whole_template_min": min(p_template), "entropy_per_token": entropy / n_tok,
                     "kl_per_token": kl / n_tok, "tokens": n_tok // len(spans)})
    print(f"{'entropy coef':>12s} {'P(template)':>12s} {'worst':>8s} {'entropy/token':>14s} {'KL/token':>9s}")
    for r in rows:
        print(f"{r['entropy_coef']:12.3f} {r['p_whole_template']:12.3f} {r['p_whole_template_min']:8.3f} "
              f"{r['entropy_per_token']:14.3f} {r['kl_per_token']:9.3f}")
    print(json.dumps({"model": a.model, "beta": a.beta, "records": len(records), "rows": rows}))


if __name__ == "__main__":
    main()
