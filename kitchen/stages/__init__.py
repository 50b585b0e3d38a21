"""Built-in stages, one module per concept. Workflows import the stage classes they use.

Each module keeps the state its stages share in a dataclass of its own
(``ctx.use(ChatData)``, ``ctx.use(Session)``...), never in string keys.
"""
