"""Training: ``qihuang.train.run(config) -> TrainResult`` for the sft and pt stages (rm, dpo plug in).

See :mod:`qihuang.train.run` for the shared workflow and :class:`qihuang.config.TrainConfig`
for every option.
"""

from qihuang.config import TrainConfig
from qihuang.train.run import TrainResult, run

__all__ = ["TrainConfig", "TrainResult", "run"]
