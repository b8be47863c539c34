"""
The task registry: for each of the paper's 17 NLU tasks, its fields, label words, input template and split
rule (spec: paper §4; the official code's `tasks/tasks.py` and `Seq2SeqLM.formater`).

Examples are stored with the field names of the Hugging Face `datasets` version of each dataset and integer
labels as there; the template turns one into T5's text-to-text input, `target()` into the label word.
"""
import string
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Task:
    name: str
    template: str  # str.format over an example: the source text
    labels: tuple  # label words, indexed by the integer label; () for STS-B's regression target
    label_field: str  # the HF field holding the label
    text_fields: tuple  # fields that must hold non-empty text
    split_rule: str  # "large": 1,000 validation examples carved from train; "small": held-out split halved
    heldout: str  # the original split that becomes the test set ("large") or is halved ("small")
    reader: str  # the reader in data/readers.py for the original distribution files

    @cached_property  # asked for every row of a cache that is read
    def template_fields(self):
        """The fields the template reads: each must be text (the text_fields must also be non-blank)."""
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.template) if name)

    def source(self, example):
        return self.template.format(**example)

    @property
    def words(self):
        """The label words of the instruct (decoder-only) format: with spaces ("not entailment"), as the official
        LLM tasks spell them; STS-B's 26 scores 0.0, 0.2, ..., 5.0 (its targets' grid)."""
        if not self.labels:
            return tuple(f"{i / 5:.1f}" for i in range(26))
        return tuple(w.replace("_", " ") for w in self.labels)

    def instruct(self, example):
        """The user message of the instruct format (official CausalLM.formater): the instruction naming the label
        words, one "field: text" line per input, then "label: " for the model to complete."""
        instruction, lines = INSTRUCT[self.name]
        return "\n".join([instruction.format(labels=", ".join(self.words)), lines.format(**example)]) + "\nlabel: "

    def answer(self, example):
        """The target of the instruct format: the label word with spaces."""
        return self.target(example) if not self.labels else self.words[example[self.label_field]]

    def target(self, example):
        value = example[self.label_field]
        if not self.labels:  # STS-B: the score rounded to the nearest 0.2, written with one decimal
            # the official code's np.round((x*5)/5, 1) rounds to 0.1: a bug, fixed here (see README)
            return f"{round(value * 5) / 5:.1f}"
        return self.labels[value]


NLI3 = ("entailment", "neutral", "contradiction")
SENTIMENT = ("negative", "positive")

TASKS = {t.name: t for t in [
    # source tasks of the paper (v1)
    Task("mnli", "mnli premise: {premise} hypothesis: {hypothesis}", NLI3, "label", ("premise", "hypothesis"),
         "large", "validation", "glue_mnli"),
    Task("qnli", "qnli question: {question} sentence: {sentence}", ("entailment", "not_entailment"), "label",
         ("question", "sentence"), "large", "validation", "glue_qnli"),
    Task("sst2", "sst2 sentence: {sentence}", SENTIMENT, "label", ("sentence",), "large", "validation", "glue_sst2"),
    Task("yelp_polarity", "yelp_polarity sentence: {text}", SENTIMENT, "label", ("text",), "large", "test",
         "zhang_yelp"),
    Task("dbpedia", "dbpedia What is the category for following text: title: {title} content: {content}",
         ("Company", "Educational Institution", "Artist", "Athlete", "Office Holder", "Mean Of Transportation",
          "Building", "Natural Place", "Village", "Animal", "Plant", "Album", "Film", "Written Work"),
         "label", ("title", "content"), "large", "test", "zhang_dbpedia"),
    Task("trec", "trec_coarse What is this question asking for: {text}",
         ("Abbreviation", "Entity", "Description", "Person", "Location", "Quantity"), "coarse_label", ("text",),
         "small", "test", "trec"),
    # target tasks of the paper's few-shot experiments
    Task("scitail", "scitail premise: {premise} hypothesis: {hypothesis}", ("entailment", "neutral"), "label",
         ("premise", "hypothesis"), "large", "test", "scitail"),
    Task("snli", "snli premise: {premise} hypothesis: {hypothesis}", NLI3, "label", ("premise", "hypothesis"),
         "large", "test", "snli"),
    Task("ag_news", "ag_news What is the category for following text: {text}",
         ("World", "Sports", "Business", "Sci/Tech"), "label", ("text",), "large", "test", "zhang_ag_news"),
    Task("yahoo", "yahoo What is the category for following text: title: {question_title} "
                  "content: {question_content} answer: {best_answer}",
         ("Society", "Science", "Health", "Education", "Computers", "Sports", "Business", "Entertainment",
          "Family", "Politics"), "topic", ("question_title",), "large", "test", "zhang_yahoo"),
    Task("imdb", "imdb sentence: {text}", SENTIMENT, "label", ("text",), "large", "test", "imdb"),
    # real SST-5 (the official code's "sst5" loaded SST-2 by mistake; see README); its template has no colon
    Task("sst5", "sst5 sentence {text}", ("very negative", "negative", "neutral", "positive", "very positive"),
         "label", ("text",), "small", "validation", "sst5_trees"),
    # the GLUE sources added in the paper's v3
    Task("qqp", "qqp question1: {question1} question2: {question2}", ("not_duplicate", "duplicate"), "label",
         ("question1", "question2"), "large", "validation", "glue_qqp"),
    Task("mrpc", "mrpc sentence1: {sentence1} sentence2: {sentence2}", ("not_equivalent", "equivalent"), "label",
         ("sentence1", "sentence2"), "small", "validation", "glue_mrpc"),
    Task("rte", "rte sentence1: {sentence1} sentence2: {sentence2}", ("entailment", "not_entailment"), "label",
         ("sentence1", "sentence2"), "small", "validation", "glue_rte"),
    Task("cola", "cola sentence: {sentence}", ("unacceptable", "acceptable"), "label", ("sentence",), "small",
         "validation", "glue_cola"),
    # the official code put STS-B in neither list, so its validation and test were the same examples: fixed by
    # treating it as the small set it is (5,749 training pairs)
    Task("stsb", "stsb sentence1: {sentence1} sentence2: {sentence2}", (), "label", ("sentence1", "sentence2"),
         "small", "validation", "glue_stsb"),
]}


# The instruct format of the decoder-only models (official tasks/tasks.py *_text_instruct): the instruction and the
# input lines. The official code has these for the first 11 tasks; the 6 few-shot targets (no LLM runs in the
# paper) follow the same pattern here (README).
REPLY = "Reply only the corresponding label."
INSTRUCT = {
    "mnli": (f"Classify the premise and hypothesis pair into labels: {{labels}}. {REPLY}",
             "premise: {premise}\nhypothesis: {hypothesis}"),
    "qnli": (f"Classify the question and sentence pair into labels: {{labels}}. {REPLY}",
             "question: {question}\nsentence: {sentence}"),
    "sst2": (f"Classify the sentence into labels: {{labels}}. {REPLY}", "sentence: {sentence}"),
    "yelp_polarity": (f"Classify the sentence into labels: {{labels}}. {REPLY}", "sentence: {text}"),
    "dbpedia": (f"Classify the title and content pair into labels: {{labels}}. {REPLY}",
                "title: {title}\ncontent: {content}"),
    "trec": (f"Classify the question into labels: {{labels}}. {REPLY}", "question: {text}"),
    "qqp": (f"Classify the question1 and question2 pair into following labels: {{labels}}. {REPLY}",
            "question1: {question1}\nquestion2: {question2}"),
    "mrpc": (f"Classify the sentence1 and sentence2 pair into labels: {{labels}}. {REPLY}",
             "sentence1: {sentence1}\nsentence2: {sentence2}"),
    "rte": (f"Classify the sentence1 and sentence2 pair into labels: {{labels}}. {REPLY}",
            "sentence1: {sentence1}\nsentence2: {sentence2}"),
    "cola": (f"Classify the sentence into labels: {{labels}}. {REPLY}", "sentence: {sentence}"),
    "stsb": (f"Classify the sentence1 and sentence2 pair into labels: {{labels}}. {REPLY}",
             "sentence1: {sentence1}\nsentence2: {sentence2}"),
    # ours, in the official pattern
    "scitail": (f"Classify the premise and hypothesis pair into labels: {{labels}}. {REPLY}",
                "premise: {premise}\nhypothesis: {hypothesis}"),
    "snli": (f"Classify the premise and hypothesis pair into labels: {{labels}}. {REPLY}",
             "premise: {premise}\nhypothesis: {hypothesis}"),
    "ag_news": (f"Classify the text into labels: {{labels}}. {REPLY}", "text: {text}"),
    "yahoo": (f"Classify the title, content and answer into labels: {{labels}}. {REPLY}",
              "title: {question_title}\ncontent: {question_content}\nanswer: {best_answer}"),
    "imdb": (f"Classify the sentence into labels: {{labels}}. {REPLY}", "sentence: {text}"),
    "sst5": (f"Classify the sentence into labels: {{labels}}. {REPLY}", "sentence: {text}"),
}


class DataError(ValueError):
    """Data the user pointed us to cannot be used; the message names the file (and line) and the fix."""


JSON_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "text",
              list: "a list", dict: "an object"}  # what json.loads can return, named for error messages


def text_problem(example, fields, required):
    """Why `example` cannot fill a template, or None: every one of `fields` must be Unicode text (a JSON file may
    hold a number, null, a list or an object there, which str.format would print, or an unpaired surrogate
    escape, which no UTF-8 file can hold), those in `required` more than blanks."""
    for field in fields:
        if field not in example:
            return f"no field {field!r}"
        value = example[field]
        if not isinstance(value, str):
            return f"field {field!r} must be text, not {JSON_KINDS[type(value)]}"
        if field in required and not value.strip():
            return f"empty text in field {field!r}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"field {field!r} is not Unicode text (an unpaired surrogate {value[e.start]!r})"
    return None


def excerpt(text, limit=80):
    """The start of an offending line, for an error message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def get_task(name):
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]
