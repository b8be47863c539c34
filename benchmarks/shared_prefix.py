"""
The shared prefix of decoder-only models (model_llama.prefix) on a real chat model: the LLM recipe's training step
(100 vectors, batch 4) and evaluation (greedy generation and rank scoring of the label words) on SST-2, side by side
in one run, each arm checked to compute the same as the shared prefix before it is timed:

- shared prefix: the prompt and the chat text every row starts with, once per prompt (what tpv trains and
  evaluates with);
- without it: every row computes its own copy of the prompt and its whole chat text, as tpv did before (the matrix
  work of the previous commit's token_losses, generate_greedy and score_candidates);
- transformers + PEFT prompt tuning (CAUSAL_LM): its loss from the labels, its generate(), and rank scoring as a
  transformers user writes it, one forward pass over each answer after every prefix.

    python bench.py shared-prefix --model HuggingFaceTB/SmolLM2-135M-Instruct
"""
import itertools
import os
import sys
import warnings

import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.common import device_words, medians, pick_device, updater, versions

ARMS = ("shared prefix", "without it", "transformers + PEFT")


def sst2_tokens(tokenizer, samples, split, n):
    """The first n SST-2 examples of a split of the samples, as tpv tokenizes them for this chat model."""
    task = common.data.get_task("sst2")
    rows = common.data.read_task(task, os.path.join(samples, "sst2"), False)[0][split][:n]
    return task, common.data.tokenize(task, rows, tokenizer)


def unshared_losses(model, prompt, batch):
    """The summed loss as tpv computed it before the shared prefix: one pass over every row with its own copy of
    the prompt (Llama.states), each label token predicted from the state before it."""
    ids, labels = batch["input_ids"], batch["labels"]
    before = model.states(ids, batch["attention_mask"], prompt)[:, -ids.shape[1] - 1:-1]  # (B, T, d)
    picked = labels != -100
    return F.cross_entropy(model.lm_head(before[picked]).float(), labels[picked], reduction="sum")


def peft_model(hf, init):
    from peft import PromptTuningConfig, get_peft_model
    peft = get_peft_model(hf, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(init)))
    with torch.no_grad():
        peft.prompt_encoder.default.embedding.weight.copy_(init)
    return peft, peft.prompt_encoder.default.embedding.weight


def training_arms(ours, peft, peft_prompt, init, batches):
    """{arm: (its prompt parameter, loss())}, from init: each call of loss() takes the arm's next batch (in turn),
    and returns the mean loss over its label tokens."""
    shared, unshared = (torch.nn.Parameter(init.clone()) for _ in range(2))
    losses = {"shared prefix": (shared, lambda b: common.model_llama.run_losses(ours, shared[None], b)[0]),
              "without it": (unshared, lambda b: unshared_losses(ours, unshared, b)),
              "transformers + PEFT": (peft_prompt, lambda b: peft(**{k: v for k, v in b.items() if k != "shared_ids"})
                                      .loss * (b["labels"] != -100).sum())}

    def mean_loss(loss_of):
        turn = itertools.cycle(batches)

        def loss():
            b = next(turn)
            return loss_of(b) / int((b["labels"] != -100).sum())
        return loss
    return {name: (prompt, mean_loss(loss_of)) for name, (prompt, loss_of) in losses.items()}


def check_training(arms, init):
    """The loss and prompt gradient of every arm against the shared prefix's, from init: exit if any differs by
    more than 1e-5 (loss) or 1e-4 (gradient, relative to its largest value)."""
    first = {}
    for name, (prompt, loss_of) in arms.items():
        with torch.no_grad():
            prompt.copy_(init)
        loss = loss_of()
        loss.backward()
        first[name] = loss.item(), prompt.grad.float().clone()
        prompt.grad = None
    loss0, grad0 = first["shared prefix"]
    differences = {name: (abs(loss - loss0) / abs(loss0), ((grad - grad0).abs().max() / grad0.abs().max()).item())
                   for name, (loss, grad) in first.items()}
    far = {name: d for name, d in differences.items() if d[0] > 1e-5 or d[1] > 1e-4}
    if far:
        sys.exit(f"bench.py shared-prefix: another loss or gradient than the shared prefix's: {far}")
    return differences


def left_padded(ids, mask, pad):
    """collate_prefixes' rows ([shared][pads][own]) as plain left-padded rows, for transformers."""
    rows = [row[m.bool()] for row, m in zip(ids, mask)]
    width = max(len(r) for r in rows)
    plain = torch.stack([F.pad(r, (width - len(r), 0), value=pad) for r in rows])
    return plain, torch.stack([F.pad(torch.ones_like(r), (width - len(r), 0)) for r in rows])


def evaluation_arms(ours, peft, prompt, batch, shared, candidates, pad, eos):
    """{measure: {arm: fn()}}: greedy generation (16 new tokens at most) and the scores of the label words."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain, plain_mask = left_padded(ids, mask, pad)
    copies = prompt.expand(len(ids), -1, -1)  # (E, n, d): every row its own copy of the prompt
    llama = common.model_llama

    def peft_scores():
        scores = []
        for c in candidates:
            full = torch.cat([plain, torch.tensor(c).expand(len(plain), -1)], dim=1)
            logits = peft(input_ids=full, attention_mask=F.pad(plain_mask, (0, len(c)), value=1)).logits
            logp = logits[:, -len(c) - 1:-1].float().log_softmax(-1)  # the positions that predict the answer
            scores.append(logp.gather(-1, torch.tensor(c).expand(len(plain), -1)[..., None]).sum((1, 2)))
        return torch.stack(scores, dim=1)  # (E, C)
    return {
        "generate": {"shared prefix": lambda: llama.generate_greedy(ours, ids, mask, prompt[None], 16, shared),
                     "without it": lambda: llama.generate_greedy(ours, ids, mask, copies, 16, 0),
                     "transformers + PEFT": lambda: peft.generate(
                         input_ids=plain, attention_mask=plain_mask, max_new_tokens=16, do_sample=False,
                         eos_token_id=eos, pad_token_id=pad)[:, plain.shape[1]:]},
        "rank": {"shared prefix": lambda: llama.score_candidates(ours, ids, mask, prompt[None], candidates, shared),
                 "without it": lambda: llama.score_candidates(ours, ids, mask, copies, candidates, 0),
                 "transformers + PEFT": peft_scores}}


def check_evaluation(measures, unpadded):
    """Every arm generates the shared prefix's tokens (up to its end) and ranks the label words alike (scores within
    1e-4 of the largest); exit otherwise. transformers + PEFT is compared on the unpadded rows alone: PEFT ignores
    the position ids that generate() derives from the mask ("Position ids are not supported for parameter efficient
    tuning"), so a left-padded row of its batch is not computed as it is alone. -> ({arm: largest score
    difference}, the generated tokens)."""
    with torch.no_grad():
        outputs = {measure: {arm: fn() for arm, fn in arms.items()} for measure, arms in measures.items()}
    compared = lambda arm, t: t[unpadded] if arm == "transformers + PEFT" else t
    reference = outputs["generate"]["shared prefix"]
    for arm, out in outputs["generate"].items():
        width = min(out.shape[1], reference.shape[1])
        if not torch.equal(compared(arm, out[:, :width]), compared(arm, reference[:, :width])):
            sys.exit(f"bench.py shared-prefix: {arm} generates other tokens than the shared prefix")
    scores = outputs["rank"]["shared prefix"]
    differences = {arm: ((compared(arm, s) - compared(arm, scores)).abs().max() / scores.abs().max()).item()
                   for arm, s in outputs["rank"].items()}
    if any(d > 1e-4 for d in differences.values()):
        sys.exit(f"bench.py shared-prefix: other label scores than the shared prefix's: {differences}")
    return differences, reference


def shared_prefix_speed(args):
    device = pick_device(args.device)
    llama = common.model_llama
    folder = common.hub.resolve_model(args.model, args.models_dir, allow_download=False)
    ours, tokenizer = llama.load_llama(folder, device), llama.load_tokenizer(folder)
    from transformers import LlamaForCausalLM
    warnings.filterwarnings("ignore", message="Position ids are not supported")  # check_evaluation says why
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()  # sdpa attention
    init = common.prompts.origin_prompt(ours, 0, args.prompt).to(device)
    peft, peft_prompt = peft_model(hf, init)
    cfg, update = ours.config, updater()
    task, train_tokens = sst2_tokens(tokenizer, args.samples, "train", args.batch * (args.repeats + 1))
    print(f"The shared prefix on {folder} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}), SST-2 from "
          f"{args.samples}, a {args.prompt}-vector prompt (origin_0), fp32, {device_words(device)}; median of "
          f"{args.repeats} after a warm-up; {versions()}")
    print(f"\n{'training step (forward, backward, AdamW)':44}{'s/step':>9}{'tokens/s':>10}{'shared is':>11}"
          f"{'loss diff':>11}{'grad diff':>11}")
    for loss in args.loss:
        make_batch = llama.batch_maker(ours, tokenizer, loss)
        batches = [{k: v.to(device) for k, v in make_batch(train_tokens, list(range(i, i + args.batch))).items()}
                   for i in range(0, args.batch * (args.repeats + 1), args.batch)]
        differences = check_training(training_arms(ours, peft, peft_prompt, init, batches[:1]), init)
        arms = training_arms(ours, peft, peft_prompt, init, batches)  # a new batch each step
        seconds = medians({name: lambda name=name, arm=arms[name]: update(name, [arm[0]], arm[1]()) for name in ARMS},
                          args.repeats, device)
        shared = sum(b["shared_ids"].numel() for b in batches) / len(batches)
        tokens = sum(int(b["attention_mask"].sum()) + args.batch * args.prompt for b in batches) / len(batches)
        print(f"--loss {loss} (batch {args.batch}; {args.prompt} vectors + {tokens / args.batch - args.prompt:.0f} "
              f"tokens a row, {shared:.0f} of them shared)")
        for name in ARMS:
            print(f"  {name:42}{seconds[name]:9.3f}{tokens / seconds[name]:10,.0f}"
                  f"{seconds[name] / seconds['shared prefix']:10.2f}x{differences[name][0]:11.1e}"
                  f"{differences[name][1]:11.1e}")

    with torch.no_grad():
        peft_prompt.copy_(init)  # the timed steps moved it
    task, test_tokens = sst2_tokens(tokenizer, args.samples, "validation", args.rows)
    batch = common.data.collate_prefixes(test_tokens, list(range(args.rows)), llama.pad_id(cfg))
    shared = batch.pop("shared_ids").numel()
    batch = {k: v.to(device) for k, v in batch.items()}
    candidates = [list(common.instruct.answer_ids(tokenizer, tokenizer.chat(), w)) for w in task.words]
    measures = evaluation_arms(ours, peft, init, batch, shared, candidates, llama.pad_id(cfg), cfg.eos_token_id)
    lengths = batch["attention_mask"].sum(1)
    differences, generated = check_evaluation(measures, lengths == lengths.max())
    real = int(batch["attention_mask"].sum())
    print(f"\n{'evaluation':44}{'s':>9}{'examples/s':>11}{'shared is':>11}{'score diff':>11}")
    print(f"{args.rows} SST-2 validation examples at once ({args.prompt} vectors + {real / args.rows:.0f} tokens a "
          f"row, {shared} of them shared); generate: up to 16 new tokens ({generated.shape[1]} here), rank: "
          f"{len(candidates)} label words; transformers + PEFT checked on the {int((lengths == lengths.max()).sum())} "
          f"unpadded rows)")
    for measure, arms in measures.items():
        with torch.no_grad():
            seconds = medians(arms, args.repeats, device)
        for name in ARMS:
            diff = f"{differences[name]:11.1e}" if measure == "rank" else f"{'-':>11}"
            print(f"  {measure + ': ' + name:42}{seconds[name]:9.3f}{args.rows / seconds[name]:11.1f}"
                  f"{seconds[name] / seconds['shared prefix']:10.2f}x{diff}")
    print("shared is: this arm's time / the shared prefix's (2.00x: the shared prefix takes half). loss diff, grad "
          "diff, score diff: relative to the shared prefix's, before timing; generation: the same tokens.")
