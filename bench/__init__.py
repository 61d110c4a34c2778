"""Benchmarks of stochnet's fused ops against eager PyTorch and torch.compile: ``python -m bench``."""
