"""Built-in demo models, offered by name so a newcomer can run the pipeline with no model of their own."""

from __future__ import annotations

import torch

from pipeline import Factory


class DemoCNN(torch.nn.Module):
    """A small residual image classifier: conv-bn-relu blocks, a skip connection, pooling, a linear head."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, channels, 3, padding=1),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
        )
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.BatchNorm2d(channels),
        )
        self.head = torch.nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def demo_cnn(seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The demo CNN in eval mode with seeded weights and batch-norm statistics, and one example input."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DemoCNN().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean = torch.randn(module.num_features, generator=generator) * 0.1
            module.running_var = torch.rand(module.num_features, generator=generator) + 0.5
    return model, (torch.randn(1, 3, 32, 32, generator=generator),)


MODELS = (
    Factory(
        "demo-cnn",
        demo_cnn,
        "a small residual CNN (conv-bn-relu, skip add, pooling, linear) on 1x3x32x32 inputs",
        {"seed": "seed of the weights and the example input (default 0)"},
    ),
)
