"""Pretrained checkpoints shipped with pairreg (``*.ckpt``); ``pairreg predict`` uses one when no --checkpoint is given."""
