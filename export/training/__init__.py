"""Training, evaluation and profiles for the couturier models."""
