"""Everything that is not the method, one concern a module (the README's tree lists them): settings, building a
run, checkpoints, outputs, pictures, the hub, logs, parallelism, real data, the memory planner, metrics, fast
numerical paths and statistics. Its foundations import no chapter; tests/test_imports.py holds the layers."""
