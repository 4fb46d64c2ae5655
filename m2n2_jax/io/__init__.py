"""Files in and out: model files, results records and the comparison report."""
