#!/usr/bin/env python3
"""The attention model of `seq2seq train --decoder attention` in plain PyTorch (eager, CPU),
for scripts/bench. Written as a PyTorch user would, from a seq2seq model directory: config.json
gives the vocabularies and sizes, model.safetensors the weights, loaded by name.

  encoder   nn.LSTM(source vocabulary, one-hot) over left-padded sources
  bridge    h = tanh(Linear(h_enc)), c = Linear(c_enc), per decoder layer (top layers aligned)
  decoder   nn.LSTM(target vocabulary + 1 (start token) + units) fed the previous token and
            the previous attentional state h~ (input feeding)
  attention Luong's "general" score h_t W_a h_s, padding masked; h~ = tanh(W_c [context; h_t]);
            with H heads (config.json's attention_heads), head k scores with slice k of h_t and
            of the keys, and h~ = tanh(W_c [context_1; ...; context_H; h_t])
  output    nn.Linear(units, target vocabulary)

Subcommands:
  train    trains a fresh model of the directory's sizes on a file of pairs (teacher forcing,
           mean cross-entropy over the target tokens and the end marker, Adam, lr 0.001) for
           --epochs; prints one JSON object with the loop's time and target tokens per second.
  predict  writes `source<TAB>answer` for each source of --file with the directory's weights,
           greedy or with --beam N (log-probability per token, as seq2seq ranks), and one JSON
           object of timings on stderr.

Only one-way encoders of character or word tokens; threads are PyTorch's default unless
--threads is given.
"""

import time

SCRIPT_START = time.perf_counter()

import argparse
import json
import random
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_reference import read_safetensors  # the same weights file, read the same way

PAD, UNK, IGNORED = 0, 1, -100


def load_config(model_dir):
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        sys.exit(f"pytorch_attention.py: {path} does not exist: --model takes a seq2seq model directory")
    config = json.loads(path.read_text())
    task, model = config["task"], config["model"]
    if task["kind"] != "pairs" or model.get("decoder") != "attention" or model.get("bidirectional"):
        sys.exit(f"pytorch_attention.py: {model_dir} is not a one-way attention model of pairs")
    return config


def tokens(text, kind):
    return list(text) if kind == "chars" else text.split()


class Vocabulary:
    def __init__(self, tokens):
        self.tokens = tokens
        self.ids = {token: i for i, token in enumerate(tokens)}

    def encode(self, items):
        return [self.ids.get(token, UNK) if token != "<pad>" else UNK for token in items]


class Attention(nn.Module):
    def __init__(self, sources, targets, encoder_units, decoder_units, encoder_layers, decoder_layers, heads=1):
        super().__init__()
        self.sources, self.targets, self.decoder_layers, self.heads = sources, targets, decoder_layers, heads
        self.encoder = nn.LSTM(sources, encoder_units, encoder_layers, batch_first=True)
        self.decoder = nn.LSTM(targets + 1 + decoder_units, decoder_units, decoder_layers, batch_first=True)
        self.bridge = nn.ModuleDict({"h": nn.Linear(encoder_units, decoder_units),
                                     "c": nn.Linear(encoder_units, decoder_units)})
        self.attention = nn.ModuleDict({"score": nn.Linear(encoder_units, decoder_units, bias=False),
                                        "combine": nn.Linear(heads * encoder_units + decoder_units, decoder_units,
                                                             bias=False)})
        self.output = nn.Linear(decoder_units, targets)

    def encode(self, source):
        memory, (h, c) = self.encoder(F.one_hot(source, self.sources).float())
        layers = h.shape[0]
        picked = [layers - 1 - min(self.decoder_layers - 1 - layer, layers - 1) for layer in range(self.decoder_layers)]
        state = (torch.tanh(self.bridge["h"](h[picked])).contiguous(), self.bridge["c"](c[picked]).contiguous())
        keys = self.attention["score"](memory)
        return memory, keys, source.eq(PAD), state

    def step(self, previous, fed, state, memory, keys, padding):
        """One step on `previous` token ids [batch]: logits, the attentional state, the new state."""
        token = F.one_hot(previous, self.targets + 1).float()
        out, state = self.decoder(torch.cat([token, fed], 1).unsqueeze(1), state)
        top = out.squeeze(1)
        (batch, steps, units), heads = keys.shape, self.heads
        keys = keys.view(batch, steps, heads, units // heads).transpose(1, 2).reshape(batch * heads, steps, -1)
        scores = torch.bmm(keys, top.view(batch * heads, -1, 1)).view(batch, heads, steps)
        scores = scores.masked_fill(padding.unsqueeze(1), float("-inf"))
        context = torch.bmm(scores.softmax(-1), memory).view(batch, -1)
        attentional = torch.tanh(self.attention["combine"](torch.cat([context, top], 1)))
        return self.output(attentional), attentional, state

    def forward(self, source, target):
        """Teacher forcing: logits [batch, steps, targets] for target ids [batch, steps]."""
        memory, keys, padding, state = self.encode(source)
        batch, steps = target.shape
        previous = torch.full((batch,), self.targets, dtype=torch.long)
        fed = memory.new_zeros(batch, self.decoder.hidden_size)
        logits = []
        for t in range(steps):
            step_logits, fed, state = self.step(previous, fed, state, memory, keys, padding)
            logits.append(step_logits)
            previous = target[:, t].clamp(min=0)
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, source, steps, drop_ended=False):
        """With `drop_ended`, a row that has written the end marker (id 0) leaves the batch, as
        seq2seq's `predict` does; its later steps read as end markers."""
        memory, keys, padding, state = self.encode(source)
        batch = source.shape[0]
        previous = torch.full((batch,), self.targets, dtype=torch.long)
        fed = memory.new_zeros(batch, self.decoder.hidden_size)
        if drop_ended:
            written = torch.full((batch, steps), PAD, dtype=torch.long)
            rows = torch.arange(batch)
            for t in range(steps):
                logits, fed, state = self.step(previous, fed, state, memory, keys, padding)
                previous = logits.argmax(-1)
                written[rows, t] = previous
                going = previous.ne(PAD).nonzero().squeeze(1)
                if len(going) == 0:
                    break
                if len(going) < len(rows):
                    rows, previous, fed = rows[going], previous[going], fed[going]
                    state = (state[0][:, going], state[1][:, going])
                    memory, keys, padding = memory[going], keys[going], padding[going]
            return written
        written = []
        for _ in range(steps):
            logits, fed, state = self.step(previous, fed, state, memory, keys, padding)
            previous = logits.argmax(-1)
            written.append(previous)
        return torch.stack(written, 1)

    @torch.no_grad()
    def beam(self, source, steps, width):
        """The best answer of a beam `width` wide: ends at the end marker (id 0), ranked by
        log-probability per written token."""
        batch = source.shape[0]
        source = source.repeat_interleave(width, 0)
        memory, keys, padding, state = self.encode(source)
        rows = batch * width
        previous = torch.full((rows,), self.targets, dtype=torch.long)
        fed = memory.new_zeros(rows, self.decoder.hidden_size)
        scores = torch.full((batch, width), float("-inf"), dtype=torch.float64)
        scores[:, 0] = 0
        scores = scores.view(rows)
        finished = torch.zeros(rows, dtype=torch.bool)
        lengths = torch.zeros(rows, dtype=torch.float64)
        written = torch.zeros(rows, 0, dtype=torch.long)
        first = (torch.arange(batch) * width).unsqueeze(1)
        carried = torch.full((1, self.targets), float("-inf"), dtype=torch.float64)
        carried[0, PAD] = 0
        for _ in range(steps):
            logits, fed, state = self.step(previous, fed, state, memory, keys, padding)
            log_probs = logits.log_softmax(-1, dtype=torch.float64)
            log_probs = torch.where(finished.unsqueeze(1), carried, log_probs)
            best, index = (scores.unsqueeze(1) + log_probs).view(batch, -1).topk(width, -1)
            origin = (first + index // self.targets).view(rows)
            token = (index % self.targets).view(rows)
            state = (state[0][:, origin], state[1][:, origin])
            fed, finished = fed[origin], finished[origin]
            lengths = lengths[origin] + (~finished).double()
            finished = finished | token.eq(PAD)
            written = torch.cat([written[origin], token.unsqueeze(1)], 1)
            scores, previous = best.view(rows), token
        normalised = (scores / lengths.clamp(min=1)).view(batch, width)
        # Ties keep the beam's order, as a stable sort does.
        choice = torch.tensor([max(range(width), key=lambda k: (row[k].item(), -k)) for row in normalised])
        return written.view(batch, width, steps)[torch.arange(batch), choice]


def build(config):
    task, model = config["task"], config["model"]
    return Attention(len(task["source_vocabulary"]), len(task["target_vocabulary"]), model["encoder_units"],
                     model["decoder_units"], model["encoder_layers"], model["decoder_layers"],
                     model.get("attention_heads", 1))


def encode_source(vocabulary, kind, text, length):
    ids = vocabulary.encode(tokens(text, kind))[:length]
    return [PAD] * (length - len(ids)) + ids


def train(args):
    config = load_config(args.model)
    task = config["task"]
    source_vocabulary, target_vocabulary = Vocabulary(task["source_vocabulary"]), Vocabulary(task["target_vocabulary"])
    in_len, out_len = task["max_source_len"], task["max_target_len"] + 1
    pairs = []
    for line in Path(args.data).read_text(encoding="utf-8").splitlines():
        source, _, target = line.partition("\t")
        target_ids = target_vocabulary.encode(tokens(target, task["target_tokens"]))
        if not source or len(tokens(source, task["source_tokens"])) > in_len or len(target_ids) >= out_len:
            continue
        padded = target_ids + [PAD] + [IGNORED] * (out_len - len(target_ids) - 1)
        pairs.append((encode_source(source_vocabulary, task["source_tokens"], source, in_len), padded))
    torch.manual_seed(args.seed)
    model = build(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    rng = random.Random(args.seed)
    counted = 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for first in range(0, len(order), args.batch_size):
            chosen = [pairs[i] for i in order[first:first + args.batch_size]]
            source = torch.tensor([s for s, _ in chosen])
            target = torch.tensor([t for _, t in chosen])
            logits = model(source, target)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORED)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            counted += int(target.ne(IGNORED).sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"training_seconds": seconds, "target_tokens": counted, "tokens_per_second": counted / seconds,
                      "pairs": len(pairs), "final_loss": loss.item(), "torch_threads": torch.get_num_threads(),
                      "torch_version": torch.__version__}))


def predict(args):
    config = load_config(args.model)
    task = config["task"]
    model = build(config)
    missing, unexpected = model.load_state_dict(read_safetensors(Path(args.model) / "model.safetensors"), strict=False)
    if missing or unexpected:
        sys.exit(f"pytorch_attention.py: names differ: missing {missing}, unexpected {unexpected}")
    model.eval()
    source_vocabulary = Vocabulary(task["source_vocabulary"])
    targets = task["target_vocabulary"]
    in_len, out_len = task["max_source_len"], task["max_target_len"] + 1
    joiner = "" if task["target_tokens"] == "chars" else " "
    lines = [line.partition("\t")[0] for line in Path(args.file).read_text(encoding="utf-8").splitlines()]
    loaded = time.perf_counter()
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    for first in range(0, len(lines), args.batch_size):
        batch = lines[first:first + args.batch_size]
        source = torch.tensor([encode_source(source_vocabulary, task["source_tokens"], s, in_len) for s in batch])
        written = (model.greedy(source, out_len, args.drop_ended) if args.beam <= 1
                   else model.beam(source, out_len, args.beam))
        for text, row in zip(batch, written.tolist()):
            end = row.index(PAD) if PAD in row else len(row)
            out.write(f"{text}\t{joiner.join(targets[i] for i in row[:end])}\n")
    out.flush()
    seconds = time.perf_counter() - loaded
    print(json.dumps({"predict_seconds": seconds, "lines": len(lines), "lines_per_second": len(lines) / seconds,
                      "startup_seconds": loaded - SCRIPT_START, "torch_threads": torch.get_num_threads()}),
          file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train")
    t.add_argument("--model", required=True, help="a seq2seq attention model directory (its sizes and vocabularies)")
    t.add_argument("--data", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--learning-rate", type=float, default=0.001)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int)
    p = commands.add_parser("predict")
    p.add_argument("--model", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--drop-ended", action="store_true",
                   help="greedy: rows that have written the end marker leave the batch (not what the bench runs)")
    p.add_argument("--output")
    p.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": train, "predict": predict}[args.command](args)


if __name__ == "__main__":
    main()
