"""unshuffle: put a shuffled residual network back together, exactly."""
from .errors import BackendUnavailable, PuzzleError
from .puzzle import Puzzle, load_puzzle

__version__ = "0.1.0"
__all__ = ["Puzzle", "PuzzleError", "BackendUnavailable", "load_puzzle", "__version__"]
