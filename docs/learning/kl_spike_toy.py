"""The KL spikes of docs/learning.md in miniature: one categorical decision trained with TRL 1.16's GRPO loss
(token-level ratio, k3 KL with use_bias_correction_kl, entropy bonus), sampled the way vqrl samples (suppressed
tokens removed), and scored either as TRL scores it (softmax over the whole vocabulary) or as it was sampled.

    python docs/learning/kl_spike_toy.py      # ~20 s on one CPU core, no model needed

It prints, per setting, the probability the policy gives the suppressed tokens (P_S) as training goes, and the
largest per-step mean of the per-token KL estimate (what TRL logs as `kl`) and the largest single-token value.
"""

import torch

V, SUPPRESSED, N, STEPS = 64, [60, 61, 62, 63], 256, 3000


def run(beta: float, entropy_coef: float, score_as_sampled: bool, lr: float = 1e-2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(V, requires_grad=True)  # the policy's logits
    ref = torch.randn(V, generator=g) * 0.5
    ref[SUPPRESSED] = -8.0  # the reference never writes the suppressed (vision) tokens
    ref_logp = torch.log_softmax(ref, -1)
    reward = torch.randn(V, generator=g)  # some tokens are better than others
    suppress = torch.zeros(V)
    suppress[SUPPRESSED] = -1e4
    opt = torch.optim.Adam([z], lr=lr)
    p_s, kl_mean, kl_token = [], [], []
    for _ in range(STEPS):
        with torch.no_grad():  # generate: sample from the softmax without the suppressed tokens
            x = torch.multinomial(torch.softmax(z + suppress, -1), N, replacement=True, generator=g)
            r = reward[x] + 0.5 * torch.randn(N, generator=g)
            adv = (r - r.mean()) / (r.std() + 1e-4)
        logp_all = torch.log_softmax(z + suppress if score_as_sampled else z, -1)
        logp = logp_all[x]
        ratio = torch.exp(logp - logp.detach())
        d = ref_logp[x] - logp
        k3 = torch.exp(d) - d - 1
        loss = (-adv * ratio + beta * k3 * ratio).mean()  # ratio on the KL: use_bias_correction_kl=True
        loss = loss + entropy_coef * (logp_all.exp() * logp_all).sum()  # minus the entropy bonus
        opt.zero_grad()
        loss.backward()
        opt.step()
        p_s.append(torch.softmax(z.detach(), -1)[SUPPRESSED].sum().item())
        kl_mean.append(k3.mean().item())
        kl_token.append(k3.max().item())
    return p_s, max(kl_mean), max(kl_token)


if __name__ == "__main__":
    marks = (0, 100, 300, 1000, STEPS - 1)
    print(f"{'setting':52s} P_S at steps {', '.join(map(str, marks))}   max step kl   max token kl")
    for name, beta, ent, fixed in (
        ("TRL scoring, beta 0.1, entropy bonus 0.02", 0.1, 0.02, False),
        ("TRL scoring, beta 0.1, no entropy bonus", 0.1, 0.0, False),
        ("TRL scoring, beta 0, entropy bonus 0.02", 0.0, 0.02, False),
        ("TRL scoring, beta 0, no entropy bonus", 0.0, 0.0, False),
        ("scored as sampled, beta 0.1, entropy bonus 0.02", 0.1, 0.02, True),
    ):
        p_s, kl_mean, kl_token = run(beta, ent, fixed)
        print(f"{name:52s} {' '.join(f'{p_s[i]:.1e}' for i in marks)}   {kl_mean:11.3g}   {kl_token:12.3g}")
