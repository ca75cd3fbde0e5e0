"""mmfusion: a zoo of text + tabular fusion models sharing the same encoders."""

__version__ = "0.1.0"
