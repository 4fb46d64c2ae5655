"""The engine that runs a method: budgets, compiled chunks of steps, the one run loop,
checkpoints, devices and hosts."""
