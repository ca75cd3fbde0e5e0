"""Looking at results: per-sample modality weights (inspection, plots) and comparing variants across seeds."""
