"""Zero-shot minimal-pair evaluation (BLiMP, BLiMP supplement, EWoK) of causal and masked LMs."""
