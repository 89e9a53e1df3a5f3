"""The device runtime: soft-labels local texts and trains the adapter for one round."""
