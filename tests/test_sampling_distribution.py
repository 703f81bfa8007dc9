"""The loss scores the distribution generation samples from: nothing is removed from sampling that the loss still
counts (vqrl used to suppress the vision tokens in sampling while TRL scored the whole vocabulary, a gap of
log(1 - P(vision tokens)) per token that the KL and entropy terms widened until TRL's KL estimate exploded)."""

from __future__ import annotations

import torch

from trainer_utils import make_trainer, write_records

RECORDS = [{"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"}]


def test_sampled_distribution_is_the_scored_one(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path / "out", [write_records(tmp_path / "d.json", RECORDS)],
                           reward_funcs=["recording:length_reward"], bf16="false", dtype="float32")
    model = trainer.model.eval()
    tok = trainer.processing_class.tokenizer
    prompt = torch.tensor([tok.encode("<|im_start|>user\nHow sharp is it?<|im_end|>\n<|im_start|>assistant\n")])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                             generation_config=trainer.generation_config, output_scores=True,
                             return_dict_in_generate=True)
    completion = out.sequences[:, prompt.shape[1]:]
    assert completion.shape[1] >= 4
    # what generation sampled from: its processed scores (temperature, top-k/p and any token suppression applied)
    sampled = torch.stack([s.float().log_softmax(-1)[0, t] for s, t in zip(out.scores, completion[0])])
    with torch.no_grad():
        scored, _, _ = trainer._get_per_token_logps_and_entropies(
            model, out.sequences, torch.ones_like(out.sequences), logits_to_keep=completion.shape[1])
    torch.testing.assert_close(scored[0], sampled, rtol=1e-5, atol=1e-5)
    vision = trainer._vision_token_ids
    assert vision and not set(trainer.generation_config.suppress_tokens or []) & set(vision)
