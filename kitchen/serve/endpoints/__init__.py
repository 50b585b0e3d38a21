"""The endpoints of ``kitchen serve``, by group; :func:`build_router` puts them in one table.

- :mod:`.service`: health, capabilities, client config, futures (retrieve/cancel);
- :mod:`.sessions`: sessions and training models (create, info, finish);
- :mod:`.training`: forward(_backward) and optim_step;
- :mod:`.checkpoints`: saving and loading weights, training runs, checkpoint REST, external exports;
- :mod:`.sampling`: sampler weights, sampling sessions and sampling.

Every group queues work through :class:`~kitchen.serve.endpoints.context.ServeContext`,
the one place a request becomes a future.
"""

from __future__ import annotations

from kitchen.serve.endpoints.context import ServeContext
from kitchen.serve.routes import Router


def build_router(ctx: ServeContext) -> Router:
    from kitchen.serve.endpoints import checkpoints, sampling, service, sessions, training

    router = Router()
    for group in (service.ServiceEndpoints(ctx), sessions.SessionEndpoints(ctx), training.TrainingEndpoints(ctx),
                  checkpoints.CheckpointEndpoints(ctx), sampling.SamplingEndpoints(ctx)):
        group.register(router)
    service.register_refusals(router)
    return router


__all__ = ["ServeContext", "build_router"]
