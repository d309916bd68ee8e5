"""PTQ side by side: torchao 0.18's prepare_pt2e + convert_pt2e against pt2e-pipeline's, in one process.

Both sides start from copies of the same exported graph, use the same quantizer
recipe (built once before any timing, so neither side pays its import) and the
same calibration batch, and are timed on prepare and on convert
(calibration is not timed: it runs the same observers on both sides). Ours runs
the built-in stages only (installed third-party plugins do not count), with
checks strict, and with the audit trail in memory and off. Memory is the
peak resident set during convert (the kernel's high-water mark, reset just
before) minus the resident set before it, as a multiple of the model's
parameter bytes, measured for each side alone in a fresh process (prepare,
calibrate, convert once): measured after the other side in the same process,
a convert reuses the heap the other side freed and its growth reads anywhere
from a tenth to all of what it really adds.

    python benchmarks/ptq.py                 # the full table (several minutes)
    python benchmarks/ptq.py --quick         # small sizes only

Each model runs in a process of its own (both sides in that one process), so
that what earlier models left behind in the interpreter (a 256-block CNN
leaves gigabytes of freed heap) weighs on neither side and each convert's
memory growth is its own. In it, the model runs in interleaved rounds
(torchao, ours, ours without the trail) and each time is the best of the
rounds, so that neither side is charged for a hiccup of the machine; a model
on which torchao takes over 5 s runs once.

    python benchmarks/ptq.py --model "transformer x4"   # one model, in this process
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from pipeline import Pipeline

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def _status_kilobytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux 4.0+); whether that was possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_resident() -> Iterator[dict[str, int]]:
    """Yields a dict filled with 'before' and 'peak' (bytes) of the resident set around the block.

    The peak is the kernel's own high-water mark, reset on entry: exact, and
    without a sampling thread that would take the GIL from the code being
    timed (which costs Python-heavy code more than code in tensor kernels).
    Where the mark cannot be reset, a thread samples the resident set every
    millisecond instead.
    """
    result = {"before": resident_bytes(), "peak": 0}
    if _reset_peak():
        try:
            yield result
        finally:
            result["peak"] = max(_status_kilobytes("VmHWM") * 1024, resident_bytes())
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["peak"] = max(result["peak"], resident_bytes())


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


class ResidualCNN(torch.nn.Module):
    def __init__(self, blocks: int, channels: int = 16) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = torch.nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class EncoderLayer(torch.nn.Module):
    def __init__(self, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        scores = torch.matmul(split(q), split(k).transpose(-1, -2)) / (width // self.heads) ** 0.5
        attended = torch.matmul(scores.softmax(-1), split(v)).transpose(1, 2).reshape(batch, tokens, width)
        x = x + self.out(attended)
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


class Transformer(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(*(EncoderLayer() for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def llama(
    layers: int, hidden: int = 64, intermediate: int = 128, vocab: int = 256
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A Llama from a transformers config with random weights (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
    )
    return LlamaForCausalLM(config).eval(), (torch.randint(0, vocab, (1, 16)),)


def models(quick: bool) -> list[tuple[str, Callable[[], tuple[torch.nn.Module, tuple[Any, ...]]]]]:
    cnn = [8] if quick else [8, 64, 256]
    transformer = [4] if quick else [4, 32]
    found: list[tuple[str, Callable[[], tuple[torch.nn.Module, tuple[Any, ...]]]]] = []
    for blocks in cnn:
        found.append(
            (
                f"residual CNN x{blocks}",
                lambda b=blocks: (ResidualCNN(b).eval(), (torch.randn(2, 3, 16, 16),)),
            )
        )
    for layers in transformer:
        found.append(
            (f"transformer x{layers}", lambda n=layers: (Transformer(n).eval(), (torch.randn(2, 16, 64),)))
        )
    if not quick:
        found.append(("llama x128 (transformers)", lambda: llama(128)))
        found.append(
            ("llama wide x4 (memory)", lambda: llama(4, hidden=1024, intermediate=2816, vocab=32000))
        )
    return found


RECIPES = ("x86", "xnnpack", "symmetric")
_recipe = "x86"


def quantizer() -> Any:
    """A fresh quantizer of the chosen recipe (torchao's XNNPACK test quantizer cannot prepare the Llama)."""
    if _recipe == "xnnpack":
        from torchao.testing.pt2e._xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    from plugins.quantizers import symmetric, x86_inductor

    return x86_inductor() if _recipe == "x86" else symmetric()


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def torchao_side(graph_module: torch.fx.GraphModule, inputs: tuple[Any, ...]) -> dict[str, float]:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared, prepare_seconds = timed(lambda: prepare_pt2e(graph_module, quantizer()))
    with torch.no_grad():
        prepared(*inputs)
    with peak_resident() as memory:
        _, convert_seconds = timed(lambda: convert_pt2e(prepared))
    return {
        "prepare": prepare_seconds,
        "convert": convert_seconds,
        "convert_memory": memory["peak"] - memory["before"],
    }


def our_side(graph_module: torch.fx.GraphModule, inputs: tuple[Any, ...], audit: bool) -> dict[str, float]:
    pipeline = Pipeline.default(allow=["pt2e-pipeline"], audit=None if audit else False)
    result, prepare_seconds = timed(lambda: pipeline.prepare(graph_module, quantizer=quantizer()))
    prepared = result.graph_module
    with torch.no_grad():
        prepared(*inputs)
    with peak_resident() as memory:
        _, convert_seconds = timed(lambda: pipeline.convert(prepared))
    return {
        "prepare": prepare_seconds,
        "convert": convert_seconds,
        "convert_memory": memory["peak"] - memory["before"],
    }


def best_of(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """The fastest prepare and convert of the rounds."""
    return {
        "prepare": min(run["prepare"] for run in runs),
        "convert": min(run["convert"] for run in runs),
    }


SIDES = ("torchao", "ours")


def exported_model(
    build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...]]],
) -> tuple[torch.fx.GraphModule, tuple[Any, ...]]:
    torch.manual_seed(0)
    model, inputs = build()
    return torch.export.export(model, inputs).module(), inputs


def convert_growth(side: str, build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...]]]) -> int:
    """One side's convert memory growth (bytes), measured once, alone, in this process."""
    exported, inputs = exported_model(build)
    if side == "torchao":
        return int(torchao_side(exported, inputs)["convert_memory"])
    return int(our_side(exported, inputs, audit=True)["convert_memory"])


def growth_in_own_process(label: str, side: str) -> int:
    """:func:`convert_growth` in a fresh process: no earlier run's freed heap can absorb the growth."""
    command = [sys.executable, __file__, "--model", label, "--recipe", _recipe, "--memory-of", side]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        sys.exit(f"{label} ({side} memory) failed:\n{finished.stderr}")
    return int(finished.stdout.split()[-1])


def rows(label: str, build: Callable[[], tuple[torch.nn.Module, tuple[Any, ...]]], rounds: int) -> list[str]:
    """One model, both sides, in this process: its table row and its per-phase line."""
    exported, inputs = exported_model(build)
    parameter_bytes = sum(p.numel() * p.element_size() for p in exported.parameters())
    nodes = len(exported.graph.nodes)
    runs: dict[str, list[dict[str, float]]] = {"torchao": [], "ours": [], "bare": []}
    for round_number in range(rounds):
        runs["torchao"].append(torchao_side(copy.deepcopy(exported), inputs))
        runs["ours"].append(our_side(exported, inputs, audit=True))
        runs["bare"].append(our_side(exported, inputs, audit=False))
        if round_number == 0 and runs["torchao"][0]["prepare"] + runs["torchao"][0]["convert"] > 5:
            break
    reference, ours, bare = (best_of(runs[side]) for side in ("torchao", "ours", "bare"))
    growth = {side: growth_in_own_process(label, side) for side in SIDES}
    theirs_total = reference["prepare"] + reference["convert"]
    ours_total = ours["prepare"] + ours["convert"]
    bare_total = bare["prepare"] + bare["convert"]
    phases = "  ".join(
        f"{phase} {reference[phase] * 1000:.1f}/{ours[phase] * 1000:.1f} ms "
        f"({ours[phase] / reference[phase]:.2f})"
        for phase in ("prepare", "convert")
    )
    return [
        f"{label:<28}{nodes:>7}{theirs_total:>11.2f}{ours_total:>9.2f}{ours_total / theirs_total:>7.2f}"
        f"{bare_total:>17.2f}{bare_total / theirs_total:>7.2f}"
        f"{growth['torchao'] / parameter_bytes:>12.2f}x"
        f"{growth['ours'] / parameter_bytes:>9.2f}x",
        f"{'':<28}{'':>7}  {phases}  (torchao/ours, ratio)",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--recipe", choices=RECIPES, default="x86", help="quantizer recipe (default x86)")
    parser.add_argument("--only", help="run only the models whose label contains this text")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="interleaved rounds per model; each time is the best (default 5)",
    )
    parser.add_argument(
        "--model", help="one model by its exact label, in this process (the table runs each in its own)"
    )
    parser.add_argument(
        "--memory-of",
        choices=SIDES,
        help="with --model: print one side's convert memory growth in bytes, measured alone in this process",
    )
    args = parser.parse_args(argv)
    global _recipe
    _recipe = args.recipe
    quantizer()
    known = dict(models(quick=False))
    if args.model is not None and args.model not in known:
        parser.error(f"no model labelled {args.model!r}; the models: {', '.join(known)}")
    if args.memory_of is not None:
        if args.model is None:
            parser.error("--memory-of needs --model")
        print(convert_growth(args.memory_of, known[args.model]), flush=True)
        return
    if args.model is not None:
        print("\n".join(rows(args.model, known[args.model], args.rounds)), flush=True)
        return
    header = (
        f"{'model':<28}{'nodes':>7}{'torchao s':>11}{'ours s':>9}{'ratio':>7}"
        f"{'ours no-trail s':>17}{'ratio':>7}{'mem torchao':>13}{'mem ours':>10}"
    )
    print(
        f"prepare + convert, {args.recipe} recipe, best of {args.rounds} interleaved rounds (one when "
        f"torchao takes over 5 s); memory = convert peak RSS growth / parameter bytes, each side "
        f"alone in a fresh process"
    )
    print(header, flush=True)
    for label, _ in models(args.quick):
        if args.only and args.only not in label:
            continue
        command = [
            sys.executable,
            __file__,
            "--model",
            label,
            "--recipe",
            args.recipe,
            "--rounds",
            str(args.rounds),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            sys.exit(f"{label} failed:\n{finished.stderr}")
        print("\n".join(finished.stdout.rstrip().splitlines()[-2:]), flush=True)


if __name__ == "__main__":
    main()
