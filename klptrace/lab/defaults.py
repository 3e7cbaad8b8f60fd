"""The guest's size and patience when nothing else is asked for (the one place they are
written: `vm`, `run --vm`, the benchmark and the tests all take them from here)."""

CPUS = 2
MEMORY = "4G"
TIMEOUT_S = 1800.0  # the longest a guest may run
