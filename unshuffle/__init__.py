"""unshuffle: put a shuffled residual network back together, exactly.

    puzzle = unshuffle.load_puzzle(folder)      # Puzzle
    sol = unshuffle.solve(puzzle)               # Solution (pair() and order() are the two halves)
"""
from .errors import BackendUnavailable, PuzzleError
from .ordering import OrderResult, order
from .pairing import PairResult, pair
from .puzzle import Puzzle, load_puzzle
from .solver import Solution, solve

__version__ = "0.1.0"
__all__ = [
    "Puzzle", "PuzzleError", "BackendUnavailable", "load_puzzle", "pair", "PairResult", "order",
    "OrderResult", "solve", "Solution", "make_puzzle", "__version__",
]


def __getattr__(name):  # the generator trains networks; import it only when asked for
    if name == "make_puzzle":
        from .generate import make_puzzle

        return make_puzzle
    raise AttributeError(f"module 'unshuffle' has no attribute {name!r}")
