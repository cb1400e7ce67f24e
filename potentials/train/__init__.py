"""Training: YAML config → statistics → loss/metrics → trainer (EMA, schedules, checkpoints,
resume) → evaluation.

    from potentials.train.config import load_config
    from potentials.train.trainer import train
    result = train(load_config("examples/train_nequip.yaml"))
"""
