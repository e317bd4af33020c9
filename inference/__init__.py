"""Solve new problems with a trained checkpoint (or an untrained base model).

    from inference import InferenceEngine
    with InferenceEngine.from_checkpoint("runs/a", which="best") as engine:
        result = engine.solve_problem(problem, num_candidates=4, max_attempts=2)
        print(result.chain["algorithm"], result.code, result.passed)
"""
__all__ = [
    "Candidate", "InferenceConfig", "InferenceEngine", "InferenceResult", "repair_feedback",
]


def __getattr__(name: str):
    """The engine (torch, transformers) is imported on first use, so `inference.config` stays light."""
    if name in __all__:
        from inference import inference_engine

        return getattr(inference_engine, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
