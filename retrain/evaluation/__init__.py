"""Evaluation: metrics gates, the gate policy, behaviour, calibration, fairness, latency, model card."""
