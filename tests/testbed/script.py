"""A scripted front end for the sans-IO operations: no proxy, no I/O.

``Script(*results)`` performs each action an operation yields by taking the next scripted
result: a value is returned, an exception raised (thrown into the operation, as a front end
does), and a callable is called with the action (to act on it, as Discard feeds a hasher).
``script.actions`` records what was asked.
"""

from __future__ import annotations

from typing import Any, List

from containers_image_proxy._core import actions


class Script:
    """Performs actions by popping scripted results; records what was asked."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.actions: List[actions.Action] = []

    def __call__(self, action: actions.Action) -> Any:
        self.actions.append(action)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        if callable(result):
            return result(action)
        return result

    def run(self, op: actions.Op[Any]) -> Any:
        value = actions.drive(op, self)
        assert not self.results, "unused scripted results"
        return value
