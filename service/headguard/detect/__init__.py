"""Detection: attention-row capture, head features, calibration and the detector."""
