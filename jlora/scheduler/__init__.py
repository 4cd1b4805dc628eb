"""Scheduling: the waiting queue, admission, decode of the running set, preemption."""
