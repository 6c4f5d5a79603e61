"""Reference FSDP2 training job that the ftsup supervisor launches, watches and restarts.

Entry points:
  * ``python -m trainer.train`` -- the training worker, run under ``torchrun``.
  * ``python -m trainer.node_agent`` -- the per-node log shipper wrapping ``torchrun``.
"""
