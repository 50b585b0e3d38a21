"""Domain logic with no I/O: renderers, datums, losses, schedules, RL/DPO/distillation math."""
