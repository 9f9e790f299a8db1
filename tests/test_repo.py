"""What the repository promises about itself: CI runs the README's test command, verbatim."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = readme.split("Set up and run the tests:", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#") and "pytest" in line]
    assert commands == [block]


def test_core_local_search_defaults_are_pythons():
    """The C++ loop's keyword defaults are unshuffle.search.local_search's (schedule, stop_loss, max_rounds,
    kicks, seed, multi): read from the binding's signature, and the default schedule checked by behaviour."""
    import ast
    import inspect
    import re

    import numpy as np
    import pytest

    core = pytest.importorskip("unshuffle._core")
    from unshuffle import search
    from unshuffle.testing import random_net

    py = inspect.signature(search.local_search).parameters
    sig = core.local_search.__doc__.splitlines()[0]
    for name in ("stop_loss", "max_rounds", "kicks", "seed", "multi"):
        m = re.search(rf"\b{name}: [^=]+ = ([^,)]+)", sig)
        assert m and ast.literal_eval(m.group(1)) == py[name].default, name
    net = random_net(3, n=6, d=8, h=16, rows=64)
    # start one re-pairing away from the true order: only the third level (repair) of the schedule finds it
    oi, oo = list(net.order_in), list(net.order_out)
    oo[1], oo[4] = oo[4], oo[1]
    args = (net.X, net.target, *net.weights, np.array(oi), np.array(oo))
    default = core.local_search(*args, stop_loss=1e-10)
    explicit = core.local_search(*args, stop_loss=1e-10, schedule=[list(s) for s in search.DEFAULT_SCHEDULE])
    assert default["stopped_reason"] == "exact" and list(default["order_out"]) == list(net.order_out)
    assert np.array_equal(default["history"], explicit["history"])
