"""OTI / OVI: optimisation-based inversion of features across the modality gap, run block-wise, evaluated by
retrieval."""
