"""OTI / OVI: optimisation-based inversion of features across the modality gap, run block-wise and evaluated by retrieval."""
