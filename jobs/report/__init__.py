"""A job's report: sampled time series (`series`), cost (`cost`), the summary's plot data (`figures`), report.html."""
