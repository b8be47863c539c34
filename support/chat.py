"""
The chat formats of Llama-3.1-Instruct, DeepSeek-LLM-Chat and two ChatML models (SmolLM2-Instruct, Qwen2.5-Instruct),
written out by hand (no jinja2 at run time): one row of FORMATS each.

`render` gives the text that transformers' `apply_chat_template(messages, tokenize=False,
add_generation_prompt=answer is None)` renders with each model's own chat_template from tokenizer_config.json, for
one user turn and an optional answer. The bos text is kept as the template writes it: the tokenizer maps it to its
id as an added token (bpe.py).

    fmt = chat_format("models/meta-llama/Llama-3.1-8B-Instruct")  # "llama3"
    render(fmt, "Is this review positive?")               # the prompt, ending with the assistant header
    render(fmt, "Is this review positive?", "yes")        # prompt + answer + answer_end(fmt)

Templates (the test pastes them verbatim and compares with transformers):
- meta-llama/Llama-3.1-8B-Instruct (July 2024): always a system header with "Cutting Knowledge Date: December 2023"
  and "Today Date: 26 Jul 2024" when no date_string is passed; every message's content goes through `| trim`.
- deepseek-ai/deepseek-llm-7b-chat: "{{ bos_token }}", then 'User: ' + content + '\\n\\n', 'Assistant: ' +
  content + eos_token, and 'Assistant:' (no space) as the generation prompt; no trimming.
- ChatML (HuggingFaceTB/SmolLM2-135M-Instruct, and its 360M and 1.7B siblings; Qwen/Qwen2.5-*-Instruct): each
  message as '<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n', a default system message when the
  chat has none (the model's own), '<|im_start|>assistant\\n' as the generation prompt; no bos, no trimming. The
  rows differ only in the system message, which is also what tells them apart.
"""
import json
import os
from typing import NamedTuple

LLAMA3_BOS = "<|begin_of_text|>"
DEEPSEEK_BOS, DEEPSEEK_EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
LLAMA3_SYSTEM = ("<|start_header_id|>system<|end_header_id|>\n\n"
                 "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>")


class ChatError(ValueError):
    """A tokenizer_config.json whose chat format tpv does not implement; the message is one line."""


class ChatFormat(NamedTuple):
    """One chat template, written out for one user turn and an optional answer."""
    model: str  # the model whose template it is, as messages name it
    markers: tuple  # texts a chat_template holds when it is this format
    prompt: str  # the text up to the generation prompt, with {user} where the user's message goes
    answer: str  # what the assistant's turn adds after the generation prompt, with {answer}
    trim: bool  # the template passes each message through jinja's `| trim` (Python's str.strip)


def chatml(model, system):
    """A ChatML row: one user turn after the model's default system message."""
    return ChatFormat(model=model, markers=("<|im_start|>", system, "<|im_end|>"),
                      prompt=f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{{user}}<|im_end|>\n"
                             "<|im_start|>assistant\n",
                      answer="{answer}<|im_end|>\n", trim=False)


FORMATS = {  # name -> format; recognised from tokenizer_config.json's chat_template by its markers (all of them)
    "llama3": ChatFormat(
        model="Llama-3.1-Instruct", markers=("<|start_header_id|>", "Cutting Knowledge Date"),
        prompt=LLAMA3_BOS + LLAMA3_SYSTEM + "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
        answer="{answer}<|eot_id|>", trim=True),
    "deepseek": ChatFormat(
        model="DeepSeek-LLM-Chat",
        markers=("'User: ' + message['content']", "'Assistant: ' + message['content'] + eos_token"),
        prompt=DEEPSEEK_BOS + "User: {user}\n\nAssistant:", answer=" {answer}" + DEEPSEEK_EOS, trim=False),
    "smollm2": chatml("SmolLM2-Instruct", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    "qwen2.5": chatml("Qwen2.5-Instruct", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
}


def chat_format(config):
    """A model folder, a tokenizer_config.json path or its parsed dict -> the name of its format in FORMATS,
    recognised by the markers in its chat_template."""
    name = "tokenizer_config.json"
    if isinstance(config, str):
        name = os.path.join(config, name) if os.path.isdir(config) else config
        try:
            with open(name, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ChatError(f"{name}: cannot read the chat template ({type(e).__name__}); download the model's "
                            f"tokenizer_config.json again") from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...] in some files
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    template = template if isinstance(template, str) else ""
    known = [fmt for fmt, row in FORMATS.items() if all(marker in template for marker in row.markers)]
    if len(known) != 1:  # two rows' markers in one template would be a table to fix, not a guess to make
        raise ChatError(f"{name}: {'no chat_template' if not template else 'an unknown chat_template'}; tpv "
                        f"writes tasks in the chat formats of {known_models()} only: use one of those models, or "
                        f"add the template as a row of support/chat.py FORMATS")
    return known[0]


def known_models():
    """The models whose chat formats tpv writes, for messages: "A, B, C and D"."""
    models = [row.model for row in FORMATS.values()]
    return ", ".join(models[:-1]) + " and " + models[-1]


def format_row(fmt):
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ChatError(f"chat format {fmt!r} is not implemented; use one of {', '.join(FORMATS)}") from None


def render(fmt, user, answer=None):
    """One user turn (and the assistant's answer, if given) as the model's chat template writes it; without an
    answer it ends with the generation prompt."""
    row = format_row(fmt)
    text = row.prompt.replace("{user}", user.strip() if row.trim else user)
    return text if answer is None else text + row.answer.replace("{answer}", answer.strip() if row.trim else answer)


def answer_end(fmt):
    """The text that closes an assistant turn; the loss covers the answer and this."""
    return format_row(fmt).answer.split("{answer}")[1]


# A chat template that renders one user turn and its answer as Llama-3.1-Instruct's does (no system message, no
# tools), for the tokenizer_config.json of `tpv.py tiny-model --family llama`: smoke runs need a chat format, and
# transformers reads this one too.
LLAMA3_SHORT_TEMPLATE = (
    "{{- bos_token }}{{- '" + LLAMA3_SYSTEM.replace("\n", "\\n") + "' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
LLAMA3_SPECIAL = {"bos_token": LLAMA3_BOS, "eos_token": answer_end("llama3")}
