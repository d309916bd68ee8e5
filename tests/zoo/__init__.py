"""Model zoo and differential harness comparing our PT2E flow against torchao."""
