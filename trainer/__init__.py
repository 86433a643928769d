"""Training pieces behind train.py: arguments, schedules, optimizers, metrics and the step."""
