"""oblivio detector: scores prompts against registered forget sets (see README.md here).

Public API (contracts.md): ``FeatureExtractor``, ``fit_forget_set``, ``ForgetSetScorer``,
``DetectorBank``.
"""

from oblivio.detector.bank import DetectorBank
from oblivio.detector.features import FeatureExtractor, PromptFeatures
from oblivio.detector.scorer import FORMAT_VERSION, ForgetSetScorer, IncompatibleScorerError, fit_forget_set

__all__ = [
    "DetectorBank",
    "FeatureExtractor",
    "PromptFeatures",
    "ForgetSetScorer",
    "IncompatibleScorerError",
    "fit_forget_set",
    "FORMAT_VERSION",
]
