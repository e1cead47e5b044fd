"""lmlab's Hydra plugins (Hydra only instantiates plugins whose module lives under `hydra_plugins`)."""
