"""
The paper's instruct format for decoder-only models: one example as chat tokens (official llama31_instruct_pt.py).

The user message is the task's instruction, its input lines and "label: " (data/tasks.py INSTRUCT); the assistant
answers with the label word. An example is stored as two token lists, like T5's source and target:

    prefix: the chat up to the generation prompt   <|begin_of_text|>...<|start_header_id|>assistant<|end_header_id|>
    answer: the label word and the end of the turn  neutral<|eot_id|>

so that evaluation generates after the prefix, and training sees prefix + answer, the text the official runs
trained on. Differences from the official runs (README): one begin-of-text token, where the official tokenizer
call added a second one in front of the template's; DeepSeek-LLM's rendered text loses "label:" as there.
"""
import functools

from support import chat

LOSSES = ("full", "answer")  # full: every token of the chat text (the official SFTTrainer); answer: the answer only
MAX_LENGTH = 512  # the official SFTTrainer max_seq_length, prefix + answer (the prompt vectors come on top)
MAX_NEW_TOKENS = 16  # the official evaluation pipeline's max_new_tokens
INVALID = "none"  # what the official evaluation made of a reply that is no label word


def user_message(fmt, text):
    # official llama31_instruct_pt.py: the DeepSeek text is edited with .replace("label:", "") after rendering
    return text.replace("label:", "") if fmt == "deepseek" else text


def example_ids(tokenizer, fmt, task, example):
    """(prefix ids, answer ids): the chat up to the generation prompt, and the answer with its end of turn."""
    prefix = chat.render(fmt, user_message(fmt, task.instruct(example)))
    return tokenizer.encode(prefix), list(answer_ids(tokenizer, fmt, task.answer(example)))


@functools.lru_cache(maxsize=None)  # a task has a few label words and is tokenized example by example
def answer_ids(tokenizer, fmt, word):
    """The tokens the chat writes after the generation prompt for the answer `word`, as a tuple. Both formats end
    the prefix where the pre-tokenizer splits anyway (a newline, or a colon before the answer's space), so prefix
    and answer tokenize as the whole chat text does (tested)."""
    prefix = chat.render(fmt, "")
    return tuple(tokenizer.encode(chat.render(fmt, "", word)[len(prefix):]))


def label_of(task, reply):
    """The official matching of a generated reply: the task's label word it equals, case-insensitively (T5's
    spelling, for the metrics), else INVALID (official: "none")."""
    for label, word in zip(task.labels or task.words, task.words):
        if reply.strip().lower() == word.lower():
            return label
    return INVALID


def tail_length(tokenizer, fmt):
    """How many tokens end every prefix after the example's own text: "label:" and the chat's turn change. A prefix
    cut to fit keeps these, so that the model still reads a well-formed question."""
    marker = "\x00"  # no task text holds it
    rendered = chat.render(fmt, user_message(fmt, marker + "\nlabel: "))  # every task's message ends so
    return len(tokenizer.encode(rendered[rendered.index(marker) + 1:]))


def truncate(prefix, answer, loss, tail, limit=MAX_LENGTH):
    """Fit prefix + answer into `limit` tokens. full: cut the end, as the official tokenizer call did (a long
    example may lose its answer); answer: keep the answer and the prefix's last `tail` tokens, cut the text
    before them."""
    if len(prefix) + len(answer) <= limit:
        return prefix, answer
    if loss == "full":
        return prefix[:limit], answer[:max(0, limit - len(prefix))]
    keep = max(0, limit - len(answer) - tail)
    return prefix[:keep] + prefix[len(prefix) - tail:], answer
