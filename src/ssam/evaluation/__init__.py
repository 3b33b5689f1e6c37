"""Scoring masks: Dice/IoU/HD95 per case and label, metrics tables, evaluation of a split."""
