"""`python -m jobs.distill`: collaborative distillation of one stage on Ray Train. `driver` parses
the command line, starts the `TorchTrainer`, and writes the figures and the export; `train` is what
every Ray Train worker runs (models, training loop, checkpoints); `config` holds the run settings
that the driver and the workers share. The losses, pruning and crop stream they use live in
`cdcore.training`.
"""
