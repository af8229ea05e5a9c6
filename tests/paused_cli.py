"""The `bridgeflow` CLI with one pause point inside a stage, so a test can SIGKILL it while it is genuinely mid-work.

    python tests/paused_cli.py stage NAME --root DIR   (any bridgeflow arguments)

Environment:
  BF_PAUSE_AT       features: after the first extraction block is marked done
                    oti:      after the first OTI block is stored, before the second one starts
                    train:    after SeMoBridge-T optimiser step BF_PAUSE_STEP (default 5)
  BF_PAUSE_MARKER   file created when the pause point is reached
  BF_PAUSE_RELEASE  optional file whose appearance ends the pause (otherwise it lasts until the process is killed)
  BF_PAUSE_MAX      seconds after which an unreleased pause fails the run (default 120), so nothing hangs forever

The hooks only wait: what the stage computes is unchanged, so a rerun can be compared with an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pause_once() -> Callable[[], None]:
    """A callable that pauses the first time it is called and does nothing afterwards."""
    reached = False

    def pause() -> None:
        nonlocal reached
        if reached:
            return
        reached = True
        Path(os.environ["BF_PAUSE_MARKER"]).touch()
        release = os.environ.get("BF_PAUSE_RELEASE")
        deadline = time.monotonic() + float(os.environ.get("BF_PAUSE_MAX", "120"))
        while not (release and Path(release).exists()):
            if time.monotonic() > deadline:
                raise SystemExit("paused_cli: the pause was neither released nor ended by a kill")
            time.sleep(0.05)

    return pause


def install(point: str) -> None:
    """Wrap the stage code at `point` with a pause (the stage modules look these names up at call time)."""
    pause = pause_once()
    if point == "features":
        from pipeline_lib.features import stage as features

        features.after_block = lambda store, group, block: pause()
    elif point == "oti":
        from pipeline_lib.inversion import jobs as inversion  # the OTI job calls run_oti through this module

        real_oti = inversion.run_oti
        calls = 0

        def run_oti(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # block 0 is stored and flagged done by now
                pause()
            return real_oti(*args, **kwargs)

        inversion.run_oti = run_oti
    elif point == "train":
        from pipeline_lib.fewshot import evaluate

        real_train = evaluate.train_semobridge_t
        at = int(os.environ.get("BF_PAUSE_STEP", "5"))

        def train(*args: Any, **kwargs: Any) -> Any:
            return real_train(*args, on_step=lambda step: pause() if step == at else None, **kwargs)

        evaluate.train_semobridge_t = train
    else:
        raise SystemExit(f"paused_cli: BF_PAUSE_AT={point!r}; expected features, oti or train")


if __name__ == "__main__":
    install(os.environ["BF_PAUSE_AT"])
    from flows.cli import app

    sys.exit(app(prog_name="bridgeflow"))
