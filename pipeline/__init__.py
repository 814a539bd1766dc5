"""A declarative, reviewable deployment pipeline for machine-learning models."""
__version__ = "0.1.0"
