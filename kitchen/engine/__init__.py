"""The workflow engine: an IR of stages, loops, conditionals and parallel branches,
interpreted over a Context while events flow to the telemetry bus."""
