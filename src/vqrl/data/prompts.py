"""Prompts: the one place where questions, think / no-think instructions and answer formats are written.

Training, the Refine reward and evaluation all build their conversations here, so they can never drift apart.
Parsing answers is the rewards' business, not this module's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUESTIONS = {
    "scoring_image": "How would you rate the overall visual quality of this image?",
    "scoring_video": "How would you rate the overall visual quality of this video?",
    "distortion_image": "Which distortion affects this image, and how severe is it (1 slight to 5 extreme)?",
    "choice_image": "Answer the question about this image's quality.",
    "choice_video": "Answer the question about this video's quality.",
    "grounding_image": "Where is the distorted region of this image? Give its box [x1, y1, x2, y2] in pixels.",
}

# What the answer must look like, per task type (the `<answer>` content).
ANSWER_FORMATS = {
    "scoring": "The score is a number between 1 (very poor) and 5 (excellent) with two decimals, "
               "as in <answer>Score: 3.62</answer>.",
    "distortion": 'Answer as in <answer>{"distortion": "gaussian_blur", "severity": 3}</answer>.',
    "choice": "Answer with the option's letter, as in <answer>B</answer>.",
    "grounding": "Answer with the box, as in <answer>[12, 40, 180, 200]</answer>.",
}
THINK_INSTRUCTION = "First reason about it inside <think> </think> tags, then give the final answer inside <answer> </answer> tags."
NO_THINK_INSTRUCTION = "Give only the final answer inside <answer> </answer> tags, with no reasoning."
REFERENCE_NOTE = "The first image is the pristine reference; the second is the one to judge."

# The assistant text that opens a no-think scoring answer: the Refine reward and expected-score inference
# teacher-force the score digits right after it.
SCORE_PREFIX = "<answer>Score: "


def task_family(rtype: str) -> str:
    return rtype.split("_", 1)[0]


@dataclass
class PromptConfig:
    think: bool = True
    system_prompt: str | None = None
    questions: dict = field(default_factory=dict)  # per-type overrides of QUESTIONS
    use_record_question: bool = True  # the seed's records carry their own question

    def question_for(self, record: dict) -> str:
        rtype = record.get("type", "scoring_image")
        if self.use_record_question and isinstance(record.get("question"), str) and record["question"].strip():
            return record["question"].strip()
        return self.questions.get(rtype) or QUESTIONS.get(rtype, QUESTIONS["scoring_image"])


def prompt_text(record: dict, cfg: PromptConfig, think: bool | None = None) -> str:
    """The user turn's text: question, options, answer format and the think / no-think instruction."""
    think = cfg.think if think is None else think
    rtype = record.get("type", "scoring_image")
    parts = []
    if record.get("reference"):
        parts.append(REFERENCE_NOTE)
    parts.append(cfg.question_for(record))
    options = record.get("options")
    if isinstance(options, list) and options and "Options:" not in parts[-1]:
        parts.append("Options: " + " ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options)))
    parts.append(ANSWER_FORMATS.get(task_family(rtype), ANSWER_FORMATS["scoring"]))
    parts.append(THINK_INSTRUCTION if think else NO_THINK_INSTRUCTION)
    return "\n".join(parts)


def build_messages(record: dict, media: list[dict], cfg: PromptConfig, think: bool | None = None) -> list[dict]:
    """A conversation whose user turn holds `media` parts (e.g. {"type": "image", "image": PIL}) then the text."""
    messages = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": cfg.system_prompt}]})
    content = list(media) + [{"type": "text", "text": prompt_text(record, cfg, think)}]
    messages.append({"role": "user", "content": content})
    return messages


def format_score(mos: float) -> str:
    """The MOS as the answer writes it: two decimals, rounded (the seed truncated)."""
    return f"{float(mos):.2f}"
