"""The engine, step by step: rollout → reward → select → buffer → train → compose → evaluate."""
