"""The serving benchmark: workloads, the driver loop, metrics, reports, traces and plots."""
