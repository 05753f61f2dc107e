"""qihuang (岐黄): from a Chinese medical knowledge base to a grounded, evaluated medical assistant."""

__version__ = "0.1.0"

DISCLAIMER = (
    "本回答由AI根据医学知识库生成，仅供健康科普参考，不能替代执业医师的诊断和治疗；"
    "如有不适请及时就医。"
)
