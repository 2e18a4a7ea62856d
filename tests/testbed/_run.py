"""Running the test bed's helper programs with errors that say what went wrong."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional


class CommandFailed(RuntimeError):
    """A helper program failed; the message carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(self.argv)} exited with {returncode}:\n{stderr.strip() or stdout.strip()}"
        )


def run(
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    input: Optional[str] = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion; ``env`` is added to (not substituted for) os.environ."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        list(argv),
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        # A helper must never read the terminal of the test run.
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc
