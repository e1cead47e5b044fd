"""lmlab's Hydra plugins (Hydra only instantiates sweepers found under the `hydra_plugins` namespace)."""
