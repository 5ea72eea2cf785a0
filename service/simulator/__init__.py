"""Embedded provider simulator: BFL, CometAPI, Apiframe, RunComfy and Replicate over real HTTP.

Serve it with ``uvicorn.run(create_simulator_app(SimulatorConfig.from_env(os.environ)))`` (or
``fluxhook simulator``), or mount it; inspect and steer it through ``/_sim/tasks`` and
``/_sim/config``.

Its names load on first use (PEP 562), so a process that only reads the simulator's settings
(``fluxhook tick`` warning about unknown variables) does not import its app, Pillow included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.simulator.app import create_simulator_app
    from service.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]


def __getattr__(name: str) -> Any:
    if name == "create_simulator_app":
        from service.simulator.app import create_simulator_app

        return create_simulator_app
    if name == "SimulatorConfig":
        from service.simulator.config import SimulatorConfig

        return SimulatorConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
