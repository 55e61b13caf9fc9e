"""Dataset evaluation: readers, organ vocabulary, simulated prompts, the runner and its tables."""

from .datasets import Case, Dataset, read_dataset
from .protocols import PROTOCOLS, Protocol, parse_protocol
from .runner import evaluate
from .tables import compare_runs

__all__ = ["Case", "Dataset", "read_dataset", "PROTOCOLS", "Protocol", "parse_protocol", "evaluate", "compare_runs"]
