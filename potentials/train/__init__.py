"""Training: YAML config → statistics → loss/metrics → trainer (EMA, schedules, checkpoints,
resume) → evaluation.

    from equimd.potentials.train.config import load_config
    from equimd.potentials.train.trainer import train
    result = train(load_config("examples/train_nequip.yaml"))
"""
