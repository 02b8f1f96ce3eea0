"""The runnable experiments behind the CLI: demo (base vs GRAFT vs P-GRAFT) and the N_I sweep."""
