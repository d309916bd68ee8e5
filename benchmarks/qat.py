"""QAT side by side: torchao 0.18's prepare_qat_pt2e + convert_pt2e against pt2e-pipeline's, in one process.

The residual CNN of ``ptq.py`` (stem conv, N blocks of conv -> BatchNorm2d ->
relu + skip, pool, linear), exported in train mode, quantized with the X86
Inductor QAT recipe. Both sides start from copies of the same exported graph
and run the same training step (not timed) and switch to eval (timed apart:
torchao's switch traces patterns too). Ours runs the built-in stages only (third-party
plugins installed in the environment do not count), with checks strict, with the
audit trail in memory and off. The speed-up is torchao's time over ours.
Each size runs in a process of its own (both sides in that one process), so
that what earlier sizes left behind in the interpreter weighs on neither; in
it, each side runs ``--repeat`` times (default 2) on fresh copies,
interleaved, and the fastest run counts, so neither side pays for a cold
first run.

    python benchmarks/qat.py                 # 4, 16, 64, 128 blocks
    python benchmarks/qat.py --quick         # 4 and 16 blocks
    python benchmarks/qat.py --repeat 1      # one run per side
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ptq import ResidualCNN, timed

from pipeline import Pipeline
from plugins.train_eval import move_exported_model_to_eval


def quantizer() -> Any:
    from plugins.quantizers import x86_inductor

    return x86_inductor(qat=True)


def train_step(model: torch.fx.GraphModule, inputs: tuple[Any, ...]) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()
    model(*inputs).pow(2).mean().backward()
    optimizer.step()


def side(
    prepare: Callable[[torch.fx.GraphModule], torch.fx.GraphModule],
    to_eval: Callable[[torch.fx.GraphModule], Any],
    convert: Callable[[torch.fx.GraphModule], Any],
    graph_module: torch.fx.GraphModule,
    inputs: tuple[Any, ...],
) -> dict[str, float]:
    prepared, prepare_seconds = timed(lambda: prepare(graph_module))
    train_step(prepared, inputs)
    _, eval_seconds = timed(lambda: to_eval(prepared))
    _, convert_seconds = timed(lambda: convert(prepared))
    return {"prepare": prepare_seconds, "eval": eval_seconds, "convert": convert_seconds}


def torchao_side(graph_module: torch.fx.GraphModule, inputs: tuple[Any, ...]) -> dict[str, float]:
    from torchao.quantization.pt2e import move_exported_model_to_eval as to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    return side(lambda m: prepare_qat_pt2e(m, quantizer()), to_eval, convert_pt2e, graph_module, inputs)


def our_side(graph_module: torch.fx.GraphModule, inputs: tuple[Any, ...], audit: bool) -> dict[str, float]:
    pipeline = Pipeline.default(allow=["pt2e-pipeline"], audit=None if audit else False)
    return side(
        lambda m: pipeline.prepare(m, quantizer=quantizer(), is_qat=True).graph_module,
        move_exported_model_to_eval,
        pipeline.convert,
        graph_module,
        inputs,
    )


def fastest(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the shortest prepare + convert."""
    return min(runs, key=lambda run: run["prepare"] + run["convert"])


def row(blocks: int, repeat: int) -> str:
    """One size, both sides, in this process: the table row."""
    quantizer()
    torch.manual_seed(0)
    inputs = (torch.randn(2, 3, 16, 16),)
    exported = torch.export.export(ResidualCNN(blocks).train(), inputs).module()
    nodes = len(exported.graph.nodes)
    runs: dict[str, list[dict[str, float]]] = {"torchao": [], "ours": [], "bare": []}
    for _ in range(repeat):
        runs["torchao"].append(torchao_side(copy.deepcopy(exported), inputs))
        runs["ours"].append(our_side(copy.deepcopy(exported), inputs, audit=True))
        runs["bare"].append(our_side(copy.deepcopy(exported), inputs, audit=False))
    reference, ours, bare = (fastest(runs[side]) for side in ("torchao", "ours", "bare"))
    theirs_total = reference["prepare"] + reference["convert"]
    ours_total = ours["prepare"] + ours["convert"]
    bare_total = bare["prepare"] + bare["convert"]
    return (
        f"{blocks:>6}{nodes:>7}{theirs_total:>9.2f}{ours_total:>8.3f}{theirs_total / ours_total:>9.1f}x"
        f"{bare_total:>15.3f}{theirs_total / bare_total:>9.1f}x"
        f"   {reference['prepare']:>7.2f} / {ours['prepare']:<7.3f}"
        f"     {reference['convert']:>7.2f} / {ours['convert']:<7.3f}"
        f"     {reference['eval']:>6.2f} / {ours['eval']:<6.4f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 and 16 blocks only")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the fastest counts")
    parser.add_argument(
        "--blocks", type=int, help="one size, in this process (the table runs each in its own)"
    )
    args = parser.parse_args(argv)
    if args.blocks is not None:
        print(row(args.blocks, args.repeat), flush=True)
        return
    sizes = [4, 16] if args.quick else [4, 16, 64, 128]
    print("QAT prepare + convert, X86 Inductor QAT recipe, seconds; speed-up = torchao / ours")
    print(
        f"{'blocks':>6}{'nodes':>7}{'torchao':>9}{'ours':>8}{'speed-up':>10}"
        f"{'ours no-trail':>15}{'speed-up':>10}"
        f"   prepare torchao/ours   convert torchao/ours   to-eval torchao/ours",
        flush=True,
    )
    for blocks in sizes:
        command = [sys.executable, __file__, "--blocks", str(blocks), "--repeat", str(args.repeat)]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            sys.exit(f"{blocks} blocks failed:\n{finished.stderr}")
        print(finished.stdout.rstrip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
