"""The project's Hydra sweeper on Optuna >= 4 (`hparams_search=optuna`): ask-and-tell, a
study in a relational database (SQLite in the sweep folder by default), pruning by the jobs
themselves. Hydra finds it in the `hydra_plugins` namespace package; see docs/sweeps.md."""
