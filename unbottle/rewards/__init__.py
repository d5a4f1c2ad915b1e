"""Differentiable rewards on images in [0, 1]: shapes CLIP, CLIP, HPSv2, PickScore, ImageReward, aesthetic.

    reward = unbottle.load_reward("shapes-clip")              # the offline default, shipped with the package
    score = reward(images, prompts)                            # (B,) float32, differentiable w.r.t. images
    loss = weight * (1 - reward.unit(score))                   # CARINOX's normalized reward r~ in about [0, 1]

| name | model | raw score | unit (r~) |
| --- | --- | --- | --- |
| shapes-clip | the shapes open_clip model (shipped) | cos | (cos + 1) / 2 |
| clip | CLIPScore, open_clip ViT-H-14 laion2B (ReNO) | 100·cos | cos |
| hps | HPSv2.1 (open_clip ViT-H-14 + HPS_v2.1_compressed.pt) | cos | 2·cos (CARINOX) |
| pickscore | PickScore_v1 (transformers CLIPModel) | logit_scale·cos | score / 30 (ReNO) |
| imagereward | ImageReward-v1.0 (optional package image-reward) | (r − mean) / std | (r + 3) / 6 (CARINOX) |
| aesthetic | LAION aesthetic MLP on CLIP ViT-L/14 | rating 1-10 | score / 10 (ReNO) |
| shapes-retrieval | text: the shapes DLM's answer checked against the prompt's record | 0 or 1 | score |

Offline first: nothing downloads unless a hub id ("hf-hub:...") is named; `category_rewards(category)` gives
category-aware weights from CARINOX's reward-human correlation study.
"""

from .aesthetic import AestheticHead, AestheticReward
from .categories import CORRELATION_FLOOR, CORRELATIONS, category_rewards
from .clip import CLIPScoreReward, OpenClipReward
from .hps import HPSReward
from .imagereward import ImageRewardReward, imagereward_score
from .pickscore import PickScoreReward
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess, preprocess
from .registry import DEFAULT, REWARDS, load_reward, parse_rewards, register_reward
from .reward import EmbeddingReward, Reward, TextReward
from .shapes_clip import ShapesClipReward
from .shapes_retrieval import RetrievalVerifierReward
from .weights import MissingDependencyError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CORRELATIONS",
    "CORRELATION_FLOOR",
    "DEFAULT",
    "REWARDS",
    "AestheticHead",
    "AestheticReward",
    "CLIPScoreReward",
    "EmbeddingReward",
    "HPSReward",
    "ImagePreprocess",
    "ImageRewardReward",
    "MissingDependencyError",
    "OpenClipReward",
    "PickScoreReward",
    "RetrievalVerifierReward",
    "Reward",
    "ShapesClipReward",
    "TextReward",
    "category_rewards",
    "imagereward_score",
    "load_reward",
    "parse_rewards",
    "preprocess",
    "register_reward",
]
