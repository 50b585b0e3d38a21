"""Built-in multi-turn environments: tool use, offline (no network, no hub download).

* :mod:`.tool_env`: :class:`~kitchen.envs.tool_env.ToolEnv`, one episode of a task the
  policy may answer directly or by calling tools first, and ``resolve_tools`` (tools by
  catalog name or ``_target_``);
* :mod:`.calculator`: the ``calculator`` tool and env (``env=calculator``): arithmetic
  too large to do in one's head, with a calculator to call.

They speak the protocol of :mod:`kitchen.train.episodes`; a plugin env does the same.
"""
