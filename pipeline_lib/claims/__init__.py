"""Claims: paired comparisons of methods, with a confidence interval and a verdict."""
