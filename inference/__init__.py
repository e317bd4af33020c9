"""Solve new problems with a trained checkpoint (or an untrained base model).

    from inference import InferenceEngine
    with InferenceEngine.from_checkpoint("runs/a", which="best") as engine:
        result = engine.solve_problem(problem, num_candidates=4, max_attempts=2)
        print(result.chain["algorithm"], result.code, result.passed)
"""
from inference.inference_engine import (
    Candidate,
    InferenceConfig,
    InferenceEngine,
    InferenceResult,
    describe_test,
    dual_agreement,
    repair_feedback,
)

__all__ = [
    "Candidate", "InferenceConfig", "InferenceEngine", "InferenceResult", "describe_test", "dual_agreement",
    "repair_feedback",
]
