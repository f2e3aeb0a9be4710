#!/usr/bin/env python3
"""The seq2seq reference model in plain PyTorch (eager, CPU), for scripts/bench.

The same model, data and training as `seq2seq train` (src/nn/model.rs, src/data/mod.rs,
src/task/, src/train/mod.rs), written as a competent PyTorch user would:

  encoder nn.LSTM(12, 75) -> final h -> repeated output_len times -> decoder nn.LSTM(75, 50)
  -> nn.Linear(50, 12) on every step; mean cross-entropy; Adam(lr=0.001); batch 32.

Subcommands:
  train    generate samples batch by batch while training, evaluate on fresh samples,
           save the state_dict (--out), print one JSON object of timings and scores on stdout.
  predict  answer expressions from a file (one per line, like 9+10+9) in batches under
           torch.no_grad(); answers on stdout (or --output), one JSON object of timings on stderr.
           --model takes this script's state_dict or a seq2seq model directory (its
           model.safetensors has the same tensor names), which checks that both forward
           passes agree.

Threads are PyTorch's default unless --threads is given; the JSON reports torch.get_num_threads().
"""

import time

SCRIPT_START = time.perf_counter()  # before `import torch`: start-up is measured from here

import argparse
import json
import math
import random
import struct
import sys
import warnings
from pathlib import Path

# The wheel works without NumPy; only its "Failed to initialize NumPy" warning would show.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
import torch
import torch.nn.functional as F
from torch import nn

ALPHABET = "0123456789+ "  # space (padding) = 11
CHAR_INDEX = {c: i for i, c in enumerate(ALPHABET)}
N_CHARS = len(ALPHABET)
EVAL_BATCH_SIZE = 1000  # as seq2seq's evaluation
READ_EVERY_STEPS = 50  # running metrics read back every 50 steps, as seq2seq does


# --- The problem ---------------------------------------------------------------------------


def input_len(n_terms, largest):
    return n_terms * math.ceil(math.log10(largest + 1)) + n_terms - 1


def output_len(n_terms, largest):
    return math.ceil(math.log10(n_terms * (largest + 1)))


def make_batch(rng, size, n_terms, largest, in_len, out_len):
    """`size` random samples as class-index tensors: inputs [size, in_len], targets [size, out_len]."""
    inputs, targets = [], []
    for _ in range(size):
        terms = [rng.randint(1, largest) for _ in range(n_terms)]
        inputs.append([CHAR_INDEX[c] for c in "+".join(map(str, terms)).rjust(in_len)])
        targets.append([CHAR_INDEX[c] for c in str(sum(terms)).rjust(out_len)])
    return torch.tensor(inputs), torch.tensor(targets)


# --- The model -----------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    def __init__(self, out_len, encoder_units=75, decoder_units=50):
        super().__init__()
        self.out_len = out_len
        self.encoder = nn.LSTM(N_CHARS, encoder_units, batch_first=True)
        self.decoder = nn.LSTM(encoder_units, decoder_units, batch_first=True)
        self.output = nn.Linear(decoder_units, N_CHARS)

    def forward(self, one_hot):
        _, (h, _) = self.encoder(one_hot)
        encoded = h[-1]  # [batch, encoder_units]
        repeated = encoded.unsqueeze(1).expand(-1, self.out_len, -1)  # RepeatVector
        decoded, _ = self.decoder(repeated)
        return self.output(decoded)  # TimeDistributed(Dense): [batch, out_len, n_chars]


def keras_init_(model, seed):
    """Keras's initialisation, drawn in the same order as seq2seq (src/nn/model.rs)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for lstm in (model.encoder, model.decoder):
            hidden, gates = lstm.hidden_size, 4 * lstm.hidden_size
            limit = math.sqrt(6.0 / (lstm.input_size + gates))
            nn.init.uniform_(lstm.weight_ih_l0, -limit, limit)
            nn.init.orthogonal_(lstm.weight_hh_l0)
            lstm.bias_ih_l0.zero_()
            lstm.bias_ih_l0[hidden : 2 * hidden] = 1.0  # unit_forget_bias
            lstm.bias_hh_l0.zero_()
            lstm.bias_hh_l0.requires_grad_(False)  # Keras has one bias: this one stays 0
        fan_in, fan_out = model.output.in_features, model.output.out_features
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(model.output.weight, -limit, limit)
        model.output.bias.zero_()


def freeze_hh_biases(model):
    for lstm in (model.encoder, model.decoder):
        lstm.bias_hh_l0.requires_grad_(False)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


class Metrics:
    """Running loss and accuracies kept as tensors; read() is the only conversion to Python."""

    def __init__(self, device="cpu"):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.chars = torch.zeros((), dtype=torch.float64, device=device)
        self.sequences = torch.zeros((), dtype=torch.float64, device=device)
        self.samples = 0
        self.chars_per_sample = 1

    @torch.no_grad()
    def add(self, logits, targets, loss):
        correct = logits.argmax(-1) == targets
        self.loss += loss.double() * len(targets)
        self.chars += correct.sum()
        self.sequences += correct.all(dim=1).sum()
        self.samples += len(targets)
        self.chars_per_sample = targets.shape[1]

    def read(self):
        n = max(self.samples, 1)
        return {
            "loss": self.loss.item() / n,
            "char_accuracy": self.chars.item() / (n * self.chars_per_sample),
            "sequence_accuracy": self.sequences.item() / n,
            "samples": self.samples,
        }


# --- train ---------------------------------------------------------------------------------


def train(args):
    in_len, out_len = input_len(args.terms, args.largest), output_len(args.terms, args.largest)
    device = torch.device(args.device)
    model = Seq2Seq(out_len)
    keras_init_(model, args.seed)
    model.to(device)
    params = trainable(model)
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
    rng = random.Random(args.seed)

    model.train()
    startup_seconds = time.perf_counter() - SCRIPT_START
    start = time.perf_counter()
    running = Metrics(device)
    steps = math.ceil(args.samples / args.batch_size)
    for step in range(steps):
        size = min(args.batch_size, args.samples - step * args.batch_size)
        inputs, targets = make_batch(rng, size, args.terms, args.largest, in_len, out_len)
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(F.one_hot(inputs, N_CHARS).float())
        loss = F.cross_entropy(logits.reshape(-1, N_CHARS), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running.add(logits, targets, loss)
        if (step + 1) % READ_EVERY_STEPS == 0 or step + 1 == steps:
            figures = running.read()
            if not math.isfinite(figures["loss"]):
                sys.exit(f"training diverged: the running loss became {figures['loss']} by step {step + 1}")
            if args.verbose:
                print(f"{figures['samples']}/{args.samples} samples  loss {figures['loss']:.4f}", file=sys.stderr)
    training_seconds = time.perf_counter() - start

    # Fresh samples: a generator of its own, so they never repeat the training stream.
    start = time.perf_counter()
    model.eval()
    eval_rng = random.Random(f"evaluation-{args.seed}")
    evaluation = Metrics(device)
    with torch.no_grad():
        for first in range(0, args.eval_samples, EVAL_BATCH_SIZE):
            size = min(EVAL_BATCH_SIZE, args.eval_samples - first)
            inputs, targets = make_batch(eval_rng, size, args.terms, args.largest, in_len, out_len)
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(F.one_hot(inputs, N_CHARS).float())
            evaluation.add(logits, targets, F.cross_entropy(logits.reshape(-1, N_CHARS), targets.reshape(-1)))
    eval_seconds = time.perf_counter() - start

    start = time.perf_counter()
    torch.save(
        {"state_dict": model.state_dict(), "problem": {"n_terms": args.terms, "largest": args.largest}},
        args.out,
    )
    save_seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                "training_seconds": training_seconds,
                "startup_seconds": startup_seconds,
                "eval_seconds": eval_seconds,
                "save_seconds": save_seconds,
                "script_seconds": time.perf_counter() - SCRIPT_START,
                "last_epoch": running.read(),
                "metrics": evaluation.read(),
                "trainable_parameters": n_params,
                "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "samples": args.samples,
                "batch_size": args.batch_size,
                "device": str(device),
                "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            }
        )
    )


# --- predict -------------------------------------------------------------------------------


def read_safetensors(path):
    """The float32 tensors of a safetensors file (seq2seq's model.safetensors)."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = bytearray(data[8 + header_len :])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        tensors[name] = torch.frombuffer(body[begin:end], dtype=torch.float32).reshape(info["shape"])
    return tensors


def load_model(path):
    """(model, n_terms, largest) from this script's state_dict or a seq2seq model directory."""
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        task = config["task"]  # config.json format 2
        if (task["kind"] != "arithmetic" or task["operators"] != "+" or task["min_terms"] != task["max_terms"]
                or task.get("reverse") or task.get("reverse_output")):
            sys.exit(f"{path}: this reference handles fixed-length addition, read and written forwards, only, not {task}")
        if config["model"].get("decoder", "repeat") != "repeat" or config["model"].get("bidirectional"):
            sys.exit(f"{path}: this reference is the repeat decoder and a one-way encoder "
                     "(scripts/pytorch_attention.py is the attention decoder)")
        n_terms, largest = task["max_terms"], task["largest"]
        state = read_safetensors(path / "model.safetensors")
        units = (config["model"]["encoder_units"], config["model"]["decoder_units"])
    else:
        saved = torch.load(path, weights_only=True)
        n_terms, largest = saved["problem"]["n_terms"], saved["problem"]["largest"]
        state = saved["state_dict"]
        units = (state["encoder.weight_hh_l0"].shape[1], state["decoder.weight_hh_l0"].shape[1])
    model = Seq2Seq(output_len(n_terms, largest), *units)
    model.load_state_dict(state)
    freeze_hh_biases(model)
    model.eval()
    return model, n_terms, largest


def parse(line, n_terms, largest):
    """The terms of an expression such as `9+10+9`, or None when it is not one."""
    try:
        terms = [int(t) for t in line.strip().split("+")]
    except ValueError:
        return None
    if len(terms) != n_terms or not all(1 <= t <= largest for t in terms):
        return None
    return terms


def predict(args):
    model, n_terms, largest = load_model(args.model)
    in_len, out_len = input_len(n_terms, largest), output_len(n_terms, largest)
    out = open(args.output, "w") if args.output else sys.stdout
    startup_seconds = time.perf_counter() - SCRIPT_START

    start = time.perf_counter()
    answered = rejected = correct = 0

    def flush(batch):
        nonlocal answered, correct
        inputs = ["+".join(map(str, terms)).rjust(in_len) for terms in batch]
        indices = torch.tensor([[CHAR_INDEX[c] for c in text] for text in inputs])
        with torch.no_grad():
            predicted = model(F.one_hot(indices, N_CHARS).float()).argmax(-1).tolist()
        lines = []
        for text, terms, row in zip(inputs, batch, predicted):
            prediction = "".join(ALPHABET[i] for i in row)
            expected = str(sum(terms)).rjust(out_len)
            correct += prediction == expected
            lines.append(f"{text} = {prediction} (expect {expected})\n")
        out.write("".join(lines))
        answered += len(batch)

    batch = []
    with open(args.file) as expressions:
        for number, line in enumerate(expressions, 1):
            terms = parse(line, n_terms, largest)
            if terms is None:
                rejected += 1
                print(f"{args.file}:{number}: not an expression of this model: {line.strip()!r}", file=sys.stderr)
                continue
            batch.append(terms)
            if len(batch) >= args.batch_size:
                flush(batch)
                batch = []
    if batch:
        flush(batch)
    out.flush()
    seconds = time.perf_counter() - start
    if out is not sys.stdout:
        out.close()

    print(
        json.dumps(
            {
                "predict_seconds": seconds,
                "startup_seconds": startup_seconds,
                "script_seconds": time.perf_counter() - SCRIPT_START,
                "answered": answered,
                "correct": correct,
                "rejected": rejected,
                "batch_size": args.batch_size,
                "torch_version": torch.__version__,
                "torch_threads": torch.get_num_threads(),
            }
        ),
        file=sys.stderr,
    )
    if rejected:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    t = commands.add_parser("train", help="train on generated samples, evaluate, save the state_dict")
    t.add_argument("--terms", type=int, default=3)
    t.add_argument("--largest", type=int, default=10)
    t.add_argument("--samples", type=int, default=75_000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--learning-rate", type=float, default=0.001)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--eval-samples", type=int, default=10_000)
    t.add_argument("--out", required=True, help="where to torch.save the state_dict")
    t.add_argument("--verbose", action="store_true", help="running loss on stderr every 50 steps")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N], for scripts/gpu-check")

    p = commands.add_parser("predict", help="answer the expressions of a file")
    p.add_argument("--model", required=True, help="a state_dict saved by `train`, or a seq2seq model directory")
    p.add_argument("--file", required=True, help="expressions, one per line")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--output", help="write answers here instead of stdout")

    for sub in (t, p):
        sub.add_argument("--threads", type=int, help="torch.set_num_threads(N) (default: PyTorch's default)")

    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    for name in ("samples", "batch_size", "eval_samples"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    train(args) if args.command == "train" else predict(args)


if __name__ == "__main__":
    main()
