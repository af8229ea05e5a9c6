"""SAM-CZSL: soft prompts, sparse alignment, visual adaptive condensation, LoRA, the test-time memory bank and the
standard closed/open-world evaluator."""
