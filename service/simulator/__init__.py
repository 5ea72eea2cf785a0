"""Embedded provider simulator: BFL, CometAPI, Apiframe and RunComfy over real HTTP.

Serve it with ``uvicorn.run(create_simulator_app(SimulatorConfig.from_env(os.environ)))`` (or
``fluxhook simulator``), or mount it; inspect and steer it through ``/_sim/tasks`` and
``/_sim/config``.
"""

from service.simulator.app import create_simulator_app
from service.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]
