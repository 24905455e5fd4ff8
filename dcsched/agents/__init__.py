"""dc-agent: reads a host's GPUs, publishes telemetry and status, launches and cancels jobs.

Imports nothing of the project but `dcsched.protocol`; only `gpu.nvml` imports pynvml, and
only when the nvml backend is chosen, so a machine without nvidia-ml-py runs the sim backend.
"""
