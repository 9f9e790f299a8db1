"""Cancellation and time budgets: one ``CancelToken`` per solve, passed through every phase.

A token carries a cancel flag (set by ``cancel()`` from any thread or a signal handler) and an optional
deadline (the time budget). Long phases poll it: Python loops call ``check()`` (raises ``Cancelled``) or
``reason()``; C++ core calls get ``token.core_flag()`` (an ``unshuffle._core.StopFlag`` set together with the
token) and ``token.remaining()`` as their time limit, and poll them once per scored work item. Nothing is
process-wide: two solves in two threads with two tokens never disturb each other.

``Budget`` records how the time of one solve was spent (per phase) and why it stopped.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

INTERRUPTED, TIME_LIMIT = "interrupted", "time_limit"

#: Default time budget of ``solve()`` and ``unshuffle solve`` in seconds (``--time-limit 0``: none).
DEFAULT_TIME_LIMIT = 600.0


class Cancelled(Exception):
    """A phase stopped because its token was cancelled (``reason`` 'interrupted') or ran out of time
    ('time_limit')."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Flag:
    """The cancel state that a token and its ``limited()`` children share."""

    def __init__(self):
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self.lock = threading.Lock()
        self.core = None  # unshuffle._core.StopFlag, made on first use (the extension may be absent)


class CancelToken:
    """Cancel flag plus deadline for one solve. ``time_limit`` None or <= 0 means no deadline."""

    def __init__(self, time_limit: Optional[float] = None):
        self._flag = _Flag()
        self.time_limit = time_limit if time_limit is not None and time_limit > 0 else None
        self.started = time.monotonic()
        self.deadline = None if self.time_limit is None else self.started + self.time_limit

    def limited(self, time_limit: Optional[float]) -> "CancelToken":
        """A child token: the same cancel flag, a deadline no later than ``time_limit`` seconds from now."""
        child = CancelToken(time_limit)
        child._flag = self._flag
        if self.deadline is not None and (child.deadline is None or self.deadline < child.deadline):
            child.deadline = self.deadline
        return child

    # -- cancelling -------------------------------------------------------------------------------------
    def cancel(self, reason: str = INTERRUPTED) -> None:
        """Ask every phase holding this token (or a relative) to stop; safe from signal handlers and threads."""
        f = self._flag
        if f.reason is None:
            f.reason = reason
        f.event.set()
        core = f.core
        if core is not None:
            core.set()

    @property
    def cancelled(self) -> bool:
        return self._flag.event.is_set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def reason(self) -> Optional[str]:
        """'interrupted' if cancelled, 'time_limit' if past the deadline, else None."""
        if self._flag.event.is_set():
            return self._flag.reason or INTERRUPTED
        if self.expired():
            return TIME_LIMIT
        return None

    def check(self) -> None:
        """Raise ``Cancelled`` if this token says stop."""
        why = self.reason()
        if why is not None:
            raise Cancelled(why)

    def remaining(self) -> Optional[float]:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until cancelled; True if cancelled."""
        return self._flag.event.wait(seconds)

    # -- the C++ core -----------------------------------------------------------------------------------
    def core_flag(self):
        """The ``unshuffle._core.StopFlag`` mirroring this token's cancel flag (set if already cancelled)."""
        f = self._flag
        with f.lock:
            if f.core is None:
                from . import _core

                f.core = _core.StopFlag()
                if f.event.is_set():
                    f.core.set()
            return f.core

    def core_time_limit(self) -> Optional[float]:
        """Time limit for a core call: the seconds left, or None. A spent budget gives a tiny positive limit
        (the core wants > 0), so the call returns at its first poll."""
        left = self.remaining()
        return None if left is None else max(left, 1e-9)


@dataclass
class Budget:
    """How one solve spent its time budget: ``phases`` (seconds per phase, in order), ``stopped`` (why the
    search stopped: exact, local_optimum, max_rounds, time_limit, interrupted) and ``stopped_in`` (the phase
    that was running when a time limit or interrupt arrived, else None)."""

    time_limit: Optional[float]
    spent: float = 0.0
    phases: Dict[str, float] = field(default_factory=dict)
    stopped: str = ""
    stopped_in: Optional[str] = None

    def to_dict(self) -> dict:
        return {"time_limit": self.time_limit, "spent": self.spent, "phases": dict(self.phases),
                "stopped": self.stopped, "stopped_in": self.stopped_in}
